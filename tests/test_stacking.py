"""An edit stacked on another PEFT adapter, on every path a PEFT user tries, against a dense reference.

The reference for "adapter X plus the edit" is PEFT's own X loaded onto a plain copy of the base model whose
weights already hold the edit's dense delta (written out by loops in reference.dense_edit): additive adapters do
not care about the order, and the others here target modules the edit leaves alone.
"""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, OFTConfig, PeftMixedModel, PeftModel, get_peft_model
from reference import assert_close_relative, dense_edit
from tiny_models import sample_input, tiny_model

from steer2edit_peft import AdapterValidationError, Steer2EditConfig, Steer2EditError
from steer2edit_peft.tuner import Steer2EditLayer
from steer2edit_peft.tuner.stacking import mixed_model_problem, save_adapters

OTHER_CONFIGS = {
    # LoRA shares o_proj with the edit; the others stay on q_proj / v_proj.
    "lora": lambda: LoraConfig(r=2, target_modules=["q_proj", "o_proj"], init_lora_weights=False),
    "loha": lambda: LoHaConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False),
    "lokr": lambda: LoKrConfig(r=2, target_modules=["q_proj", "v_proj"], init_weights=False),
    "oft": lambda: OFTConfig(r=0, oft_block_size=8, target_modules=["q_proj", "v_proj"], init_weights=False),
}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(sample_input()).logits


@pytest.fixture(scope="module")
def edit(tmp_path_factory):
    """A saved random edit of every o_proj and down_proj, and its dense deltas by module."""
    folder = tmp_path_factory.mktemp("edit")
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    model.save_pretrained(folder)
    deltas = {
        name: dense_edit(module, "default")
        for name, module in model.base_model.model.named_modules()
        if isinstance(module, Steer2EditLayer)
    }
    return folder, deltas


def save_other(kind: str, folder) -> None:
    torch.manual_seed(1)
    get_peft_model(tiny_model("llama"), OTHER_CONFIGS[kind]()).save_pretrained(folder)


def with_edit_merged(deltas):
    """A plain base model whose weights are W + the edit's dense delta."""
    model = tiny_model("llama")
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(name).weight += delta.float()
    return model


def reference(deltas, other_folder=None):
    plain = with_edit_merged(deltas) if deltas else tiny_model("llama")
    return PeftModel.from_pretrained(plain, other_folder) if other_folder else plain


def mixed_model(kind: str, other_folder, edit_folder) -> PeftMixedModel:
    if kind == "oft":  # PEFT's PeftMixedModel.from_pretrained refuses OFT as the first adapter; load_adapter takes it
        mixed = PeftMixedModel.from_pretrained(tiny_model("llama"), edit_folder, adapter_name="edit")
        mixed.load_adapter(other_folder, "other")
        return mixed
    mixed = PeftMixedModel.from_pretrained(tiny_model("llama"), other_folder, adapter_name="other")
    mixed.load_adapter(edit_folder, "edit")
    return mixed


@pytest.mark.parametrize("kind", sorted(OTHER_CONFIGS))
def test_a_mixed_model_holds_an_edit_beside_another_adapter(edit, tmp_path, kind):
    edit_folder, deltas = edit
    other = tmp_path / kind
    save_other(kind, other)
    mixed = mixed_model(kind, other, edit_folder)
    mixed.set_adapter(["other", "edit"])
    both = logits(reference(deltas, other))
    assert_close_relative(logits(mixed), both)
    with mixed.disable_adapter():
        assert_close_relative(logits(mixed), logits(tiny_model("llama")))
    mixed.set_adapter(["edit"])
    assert_close_relative(logits(mixed), logits(reference(deltas)))
    mixed.set_adapter(["other"])
    assert_close_relative(logits(mixed), logits(reference({}, other)))

    # PEFT cannot save a PeftMixedModel; save_adapters writes each adapter in its own format, and they reload.
    mixed.set_adapter(["other", "edit"])
    folders = save_adapters(mixed, tmp_path / "saved")
    reloaded = mixed_model(kind, folders["other"], folders["edit"])
    reloaded.set_adapter(["other", "edit"])
    assert_close_relative(logits(reloaded), both)

    merged = mixed.merge_and_unload()
    assert not any(isinstance(m, Steer2EditLayer) for m in merged.modules())
    assert_close_relative(logits(merged), both, rtol=1e-4)


def test_a_mixed_model_can_start_from_the_edit(edit, tmp_path):
    edit_folder, deltas = edit
    save_other("lora", tmp_path / "lora")
    mixed = PeftMixedModel.from_pretrained(tiny_model("llama"), edit_folder, adapter_name="edit")
    mixed.load_adapter(tmp_path / "lora", "ft")
    mixed.set_adapter(["edit", "ft"])
    assert_close_relative(logits(mixed), logits(reference(deltas, tmp_path / "lora")))
    mixed.delete_adapter("ft")
    assert_close_relative(logits(mixed), logits(reference(deltas)))


def test_a_damaged_edit_is_refused_by_the_mixed_model_before_anything_changes(edit, tmp_path):
    edit_folder, _ = edit
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (damaged / name).write_bytes((edit_folder / name).read_bytes())
    (damaged / "adapter_config.json").write_text(
        (damaged / "adapter_config.json").read_text().replace('"strength": 1.0', '"strength": NaN')
    )
    save_other("lora", tmp_path / "lora")
    mixed = PeftMixedModel.from_pretrained(tiny_model("llama"), tmp_path / "lora", adapter_name="ft")
    before = logits(mixed)
    with pytest.raises(AdapterValidationError, match="strength must be a finite number"):
        mixed.load_adapter(damaged, "edit")
    assert list(mixed.peft_config) == ["ft"]
    assert not any(isinstance(m, Steer2EditLayer) for m in mixed.modules())
    assert torch.equal(logits(mixed), before)


def test_peft_load_adapter_adds_an_edit_to_a_lora_model_as_its_exact_lora(edit, tmp_path, caplog):
    edit_folder, deltas = edit
    save_other("lora", tmp_path / "lora")
    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "lora", adapter_name="ft")
    with caplog.at_level(logging.WARNING, logger="steer2edit_peft"):
        model.load_adapter(edit_folder, adapter_name="edit")
    assert [r.getMessage() for r in caplog.records if "its exact LoRA" in r.getMessage()], caplog.text
    assert isinstance(model.peft_config["edit"], LoraConfig)
    model.base_model.set_adapter(["ft", "edit"])
    both = logits(reference(deltas, tmp_path / "lora"))
    assert_close_relative(logits(model), both)
    model.set_adapter("edit")
    assert_close_relative(logits(model), logits(reference(deltas)))
    model.base_model.set_adapter(["ft", "edit"])
    assert_close_relative(logits(model.merge_and_unload()), both, rtol=1e-4)


def test_an_edit_made_for_another_model_is_refused_on_a_lora_model(edit, tmp_path):
    edit_folder, _ = edit
    torch.manual_seed(1)
    get_peft_model(tiny_model("llama", hidden_size=48), OTHER_CONFIGS["lora"]()).save_pretrained(tmp_path / "lora")
    model = PeftModel.from_pretrained(tiny_model("llama", hidden_size=48), tmp_path / "lora", adapter_name="ft")
    before = logits(model)
    with pytest.raises(AdapterValidationError, match="made for another base model"):
        model.load_adapter(edit_folder, adapter_name="edit")
    assert list(model.peft_config) == ["ft"]
    assert torch.equal(logits(model), before)


def test_a_lora_loaded_onto_an_edit_model_names_the_route_that_works(edit, tmp_path):
    edit_folder, _ = edit
    save_other("lora", tmp_path / "lora")
    model = PeftModel.from_pretrained(tiny_model("llama"), edit_folder)
    before = logits(model)
    with pytest.raises(Steer2EditError, match="load the LORA adapter first and the edit after it"):
        model.load_adapter(tmp_path / "lora", adapter_name="ft")
    assert list(model.peft_config) == ["default"]
    assert torch.equal(logits(model), before)


def test_transformers_load_adapter_twice_holds_both_or_says_what_to_do(edit, tmp_path):
    edit_folder, deltas = edit
    save_other("lora", tmp_path / "lora")
    model = tiny_model("llama")
    model.load_adapter(str(tmp_path / "lora"), adapter_name="ft")
    model.load_adapter(str(edit_folder), adapter_name="edit")
    assert_close_relative(logits(model), logits(reference(deltas, tmp_path / "lora")))  # both active, as loaded
    try:
        model.set_adapter("ft")
    except Steer2EditError as error:  # transformers asks for a PEFT newer than the installed one
        assert "PeftMixedModel" in str(error) and "all active" in str(error)
    else:
        assert_close_relative(logits(model), logits(reference({}, tmp_path / "lora")))


def test_this_peft_mixed_model_internals_are_the_ones_the_package_extends(monkeypatch):
    assert mixed_model_problem() is None
    from peft.tuners.mixed import model as mixed

    monkeypatch.delattr(mixed, "Layers")
    assert "lacks Layers" in mixed_model_problem() and "to_lora" in mixed_model_problem()


def test_on_a_peft_whose_mixed_model_changed_a_steer2edit_adapter_is_refused_clearly():
    from steer2edit_peft.tuner.stacking import _refuse_in_mixed_models

    class MixedModelOfAnotherPeft:
        def __init__(self, model, peft_config, adapter_name="default"):
            self.adapter_name = adapter_name

    _refuse_in_mixed_models(MixedModelOfAnotherPeft, "internals changed: export the edit with to_lora")
    with pytest.raises(Steer2EditError, match="internals changed: export the edit with to_lora"):
        MixedModelOfAnotherPeft(None, Steer2EditConfig())
    assert MixedModelOfAnotherPeft(None, LoraConfig(), "ft").adapter_name == "ft"  # other types untouched
