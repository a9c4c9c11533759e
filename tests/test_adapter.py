"""The Steer2Edit adapter against dense references, across architectures, and through PEFT's surface."""

from __future__ import annotations

import importlib

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType
from reference import assert_close_relative, dense_edit, densely_edited_copy
from tiny_models import ARCHITECTURES, CharTokenizer, ragged_probe, sample_input, tiny_config, tiny_model
from transformers import AutoModelForCausalLM

import steer2edit_peft
from steer2edit_peft import (
    Steer2EditConfig,
    Steer2EditModel,
    UnknownArchitectureError,
    extract_steering_vectors,
)
from steer2edit_peft.tuner import Steer2EditLayer


def random_edit(arch: str, seed: int = 0, **config):
    model = tiny_model(arch)
    torch.manual_seed(seed)
    return get_peft_model(model, Steer2EditConfig(init_weights=False, **config))


def edit_layers(peft_model) -> dict[str, Steer2EditLayer]:
    return {n: m for n, m in peft_model.named_modules() if isinstance(m, Steer2EditLayer)}


def logits(model, inputs=None) -> torch.Tensor:
    with torch.no_grad():
        return model(sample_input() if inputs is None else inputs).logits


# --- registration -------------------------------------------------------------------------------


def test_import_registers_steer2edit_with_peft():
    assert PeftType.STEER2EDIT == "STEER2EDIT"
    assert PeftType("STEER2EDIT") is PeftType.STEER2EDIT
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.STEER2EDIT] is Steer2EditConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.STEER2EDIT] is Steer2EditModel


def test_importing_twice_is_harmless():
    members = len(PeftType)
    importlib.reload(steer2edit_peft)
    steer2edit_peft.tuner.registration.register()
    assert len(PeftType) == members
    assert Steer2EditConfig().peft_type is PeftType.STEER2EDIT


# --- exactness on every architecture ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unmerged_output_matches_dense_reference(arch):
    peft_model = random_edit(arch)
    reference = densely_edited_copy(peft_model, ["default"])
    assert_close_relative(logits(peft_model), logits(reference))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merged_output_matches_unmerged(arch):
    peft_model = random_edit(arch)
    unmerged = logits(peft_model)
    peft_model.merge_adapter()
    assert_close_relative(logits(peft_model), unmerged)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merge_then_unmerge_restores_base_weights(arch):
    peft_model = random_edit(arch)
    before = {n: m.get_base_layer().weight.detach().clone() for n, m in edit_layers(peft_model).items()}
    peft_model.merge_adapter()
    assert any(not torch.equal(before[n], m.get_base_layer().weight) for n, m in edit_layers(peft_model).items())
    peft_model.unmerge_adapter()
    for name, module in edit_layers(peft_model).items():
        assert torch.equal(module.get_base_layer().weight, before[name]), name  # bit for bit


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(arch, tmp_path):
    peft_model = random_edit(arch)
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".safetensors", ".bin")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    assert_close_relative(logits(loaded), expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_targets_are_the_output_projections(arch):
    peft_model = random_edit(arch)
    config = peft_model.peft_config["default"]
    layers = tiny_config(arch).get_text_config().num_hidden_layers
    assert len(edit_layers(peft_model)) == 2 * layers
    head_layers = [m for m in edit_layers(peft_model).values() if m.component_size["default"] > 1]
    assert len(head_layers) == layers
    assert all(m.component_size["default"] == config.head_dim for m in head_layers)


def test_dense_reference_is_rank_one_per_term():
    peft_model = random_edit("llama")
    for module in edit_layers(peft_model).values():
        assert torch.linalg.matrix_rank(dense_edit(module, "default")).item() == 1
        torch.testing.assert_close(module.get_delta_weight("default").double(), dense_edit(module, "default"))


def renamed_projections(model):
    """The model with its output projections under names nothing recognises."""
    for layer in model.model.layers:
        layer.self_attn.add_module("mystery_out", layer.self_attn.o_proj)
        layer.mlp.add_module("mystery_down", layer.mlp.down_proj)
        del layer.self_attn.o_proj, layer.mlp.down_proj
    return model


def test_a_model_type_no_table_names_is_recognised_by_its_structure():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    peft_model = get_peft_model(model, Steer2EditConfig(init_weights=False))
    config = peft_model.peft_config["default"]
    assert config.attention_modules == ["self_attn.o_proj"] and config.mlp_modules == ["mlp.down_proj"]
    assert config.head_dim == 8 and len(edit_layers(peft_model)) == 4


def test_unknown_architecture_error_says_how_to_target_by_hand():
    model = renamed_projections(tiny_model("llama"))
    with pytest.raises(UnknownArchitectureError, match="attention_modules=.*mlp_modules"):
        get_peft_model(model, Steer2EditConfig())


def test_modules_passed_by_hand_on_an_unknown_architecture():
    model = renamed_projections(tiny_model("llama"))
    config = Steer2EditConfig(
        attention_modules=["self_attn.mystery_out"], mlp_modules=["mlp.mystery_down"], init_weights=False
    )
    peft_model = get_peft_model(model, config)
    assert config.head_dim == 8 and len(edit_layers(peft_model)) == 4


@pytest.mark.parametrize("family", ["rho_attn", "rho_mlp"])
@pytest.mark.parametrize("off", [None, 0.0, -1.0])
def test_rho_switches_a_family_off(family, off):
    peft_model = random_edit("llama", **{family: off})
    names = list(edit_layers(peft_model))
    kept = "down_proj" if family == "rho_attn" else "o_proj"
    assert names and all(n.endswith(kept) for n in names)


def test_grouped_query_attention_with_wide_heads_splits_o_proj_by_head_dim():
    peft_model = random_edit("qwen3")  # 4 heads of 16 on a 32-wide model, 2 KV heads
    o_proj = next(m for n, m in edit_layers(peft_model).items() if n.endswith("o_proj"))
    assert o_proj.in_features == 64 and o_proj.component_size["default"] == 16


# --- runtime strength ---------------------------------------------------------------------------


def test_strength_zero_is_identity_and_negative_reverses():
    peft_model = random_edit("llama")
    with peft_model.disable_adapter():
        base = logits(peft_model)
    solved = {n: dense_edit(m, "default") for n, m in edit_layers(peft_model).items()}
    peft_model.base_model.set_strength(0.0)
    torch.testing.assert_close(logits(peft_model), base)
    peft_model.base_model.set_strength(-1.0)
    for name, module in edit_layers(peft_model).items():
        torch.testing.assert_close(module.get_delta_weight("default").double(), -solved[name])
    assert peft_model.peft_config["default"].strength == -1.0


def test_init_weights_true_is_an_identity_edit():
    model = tiny_model("llama")
    base = logits(model)
    peft_model = get_peft_model(model, Steer2EditConfig())
    torch.testing.assert_close(logits(peft_model), base)


# --- PEFT surface -------------------------------------------------------------------------------


@pytest.mark.parametrize("autocast, dtype", [(True, torch.float32), (False, torch.bfloat16)])
def test_adapter_parameters_follow_the_adapter_dtype(autocast, dtype):
    # PEFT's convention: adapters are upcast to float32 unless autocast_adapter_dtype=False.
    model = tiny_model("llama", dtype=torch.bfloat16)
    peft_model = get_peft_model(model, Steer2EditConfig(init_weights=False), autocast_adapter_dtype=autocast)
    for module in edit_layers(peft_model).values():
        for name in ("steer2edit_u", "steer2edit_k", "steer2edit_lambda"):
            parameter = getattr(module, name)["default"]
            assert isinstance(parameter, torch.nn.Parameter) and parameter.dtype == dtype


def test_solved_and_loaded_edits_are_frozen_and_train_when_asked(tmp_path):
    from steer2edit_peft import edit_model

    vectors = extract_steering_vectors(tiny_model("llama"), CharTokenizer(), ragged_probe(), show_progress=False)
    solved = edit_model(tiny_model("llama"), vectors, Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5))
    assert not any(p.requires_grad for p in solved.parameters())
    solved.save_pretrained(tmp_path)
    assert not any(p.requires_grad for p in PeftModel.from_pretrained(tiny_model("llama"), tmp_path).parameters())
    # Fine-tuning the edit from its solved start: only lambda, u and k train, and a step changes the output.
    trainable = PeftModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    names = {n.rsplit(".", 2)[-2] for n, p in trainable.named_parameters() if p.requires_grad}
    assert names == {"steer2edit_u", "steer2edit_k", "steer2edit_lambda"}
    x = sample_input()
    before = trainable(x).logits.detach()
    loss = trainable(x).logits.pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for parameter in trainable.parameters():
            if parameter.requires_grad:
                parameter -= 0.5 * parameter.grad
    assert not torch.allclose(trainable(x).logits, before)


def test_multiple_adapters_set_adapter_and_delete():
    peft_model = random_edit("llama", seed=0)
    torch.manual_seed(5)
    peft_model.add_adapter("other", Steer2EditConfig(init_weights=False))
    first = logits(peft_model)
    peft_model.set_adapter("other")
    second = logits(peft_model)
    assert not torch.allclose(first, second)
    assert_close_relative(second, logits(densely_edited_copy(peft_model, ["other"])))
    peft_model.delete_adapter("other")
    assert peft_model.active_adapters == ["default"]
    assert_close_relative(logits(peft_model), first)


def test_disable_adapter_gives_the_base_model():
    model = tiny_model("gpt2")
    base = logits(model)
    peft_model = get_peft_model(model, Steer2EditConfig(init_weights=False))
    with peft_model.disable_adapter():
        torch.testing.assert_close(logits(peft_model), base)
    assert not torch.allclose(logits(peft_model), base)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_and_unload_and_unload(arch):
    peft_model = random_edit(arch)
    edited = logits(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model)
    merged = peft_model.merge_and_unload()
    assert not any(isinstance(m, Steer2EditLayer) for m in merged.modules())
    assert_close_relative(logits(merged), edited)

    peft_model = random_edit(arch)
    plain = peft_model.unload()
    assert not any(isinstance(m, Steer2EditLayer) for m in plain.modules())
    torch.testing.assert_close(logits(plain), base)


def test_safe_merge_refuses_nan():
    peft_model = random_edit("llama")
    module = next(iter(edit_layers(peft_model).values()))
    with torch.no_grad():
        module.steer2edit_lambda["default"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        peft_model.merge_adapter(safe_merge=True)


def test_add_weighted_adapter_is_exact_concatenation():
    peft_model = random_edit("llama", seed=0)
    torch.manual_seed(7)
    peft_model.add_adapter("other", Steer2EditConfig(init_weights=False))
    peft_model.base_model.add_weighted_adapter(["default", "other"], [0.5, -2.0], "combo")
    peft_model.set_adapter("combo")
    for module in edit_layers(peft_model).values():
        expected = 0.5 * dense_edit(module, "default") - 2.0 * dense_edit(module, "other")
        torch.testing.assert_close(dense_edit(module, "combo"), expected)
        assert module.steer2edit_u["combo"].shape[0] == 2
    reference = densely_edited_copy(peft_model, ["combo"])
    assert_close_relative(logits(peft_model), logits(reference))


def test_add_weighted_adapter_over_edits_of_different_modules(tmp_path):
    # default edits heads of every o_proj; "other" edits neurons of the second layer's down_proj only.
    torch.manual_seed(0)
    peft_model = get_peft_model(
        tiny_model("llama"), Steer2EditConfig(init_weights=False, rho_mlp=None, attention_modules=["o_proj"])
    )
    torch.manual_seed(7)
    other = Steer2EditConfig(init_weights=False, rho_attn=None, mlp_modules=["down_proj"], layers_to_transform=[1])
    peft_model.add_adapter("other", other)
    peft_model.base_model.add_weighted_adapter(["default", "other"], [0.5, -2.0], "combo")
    layers = edit_layers(peft_model)
    combined = {name for name, module in layers.items() if "combo" in module.steer2edit_u}
    assert combined == {name for name, m in layers.items() if "default" in m.steer2edit_u or "other" in m.steer2edit_u}
    for name in combined:
        module = layers[name]
        expected = sum(
            w * dense_edit(module, source)
            for source, w in (("default", 0.5), ("other", -2.0))
            if source in module.steer2edit_u
        )
        torch.testing.assert_close(dense_edit(module, "combo"), expected)
        sources = [source for source in ("default", "other") if source in module.steer2edit_u]
        assert module.steer2edit_u["combo"].shape[0] == len(sources)  # one row per source term, nothing padded
    peft_model.set_adapter("combo")
    expected_logits = logits(densely_edited_copy(peft_model, ["combo"]))
    assert_close_relative(logits(peft_model), expected_logits)
    peft_model.save_pretrained(tmp_path, selected_adapters=["combo"])
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "combo")
    assert_close_relative(logits(reloaded), expected_logits)


def test_peft_convert_to_lora_reproduces_the_edit():
    from peft import LoraConfig, set_peft_model_state_dict
    from peft.tuners.lora.conversion import convert_to_lora

    peft_model = random_edit("llama")
    lora_config, state = convert_to_lora(peft_model, rank=8)  # PEFT's own converter, through get_delta_weight
    assert isinstance(lora_config, LoraConfig) and state
    lora_model = get_peft_model(tiny_model("llama"), lora_config)
    set_peft_model_state_dict(lora_model, state)
    assert_close_relative(logits(lora_model), logits(peft_model), 1e-4)


def test_low_cpu_mem_usage_loading(tmp_path):
    peft_model = random_edit("mistral")
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("mistral"), tmp_path, low_cpu_mem_usage=True)
    assert_close_relative(logits(loaded), expected)


def test_auto_peft_model_loads_base_and_adapter(tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_model("qwen2").save_pretrained(base_dir)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), Steer2EditConfig(init_weights=False))
    peft_model.save_pretrained(adapter_dir)
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    assert_close_relative(logits(loaded), logits(peft_model))


def test_transformers_load_adapter(tmp_path):
    peft_model = random_edit("llama")
    expected = logits(peft_model)
    peft_model.save_pretrained(tmp_path)
    model = tiny_model("llama")
    model.load_adapter(str(tmp_path))
    assert_close_relative(logits(model), expected)


def test_loading_a_second_named_adapter(tmp_path):
    peft_model = random_edit("llama", seed=0)
    peft_model.save_pretrained(tmp_path / "a")
    torch.manual_seed(3)
    other = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    other.save_pretrained(tmp_path / "b")
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "a")
    loaded.load_adapter(tmp_path / "b", adapter_name="b")
    loaded.set_adapter("b")
    assert_close_relative(logits(loaded), logits(other))


def test_plain_torch_module_with_targets_by_hand():
    # PEFT's test battery style: a bare nn.Module without a transformers config.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(3, 6)
    peft_model = get_peft_model(model, Steer2EditConfig(target_modules=["2"], init_weights=False))
    layer = peft_model.base_model.model[2]
    expected = model[0:2](x) @ (layer.get_base_layer().weight.double() + dense_edit(layer, "default")).float().T
    assert_close_relative(peft_model(x), expected + layer.get_base_layer().bias)


def test_combining_an_edit_with_itself_doubles_it_although_every_column_is_shared():
    peft_model = random_edit("llama", seed=0)
    single = logits(peft_model)
    peft_model.base_model.add_weighted_adapter(["default", "default"], [1.0, 1.0], "twice")
    peft_model.set_adapter("twice")
    for module in edit_layers(peft_model).values():
        torch.testing.assert_close(module.get_delta_weight("twice"), 2 * module.get_delta_weight("default"))
    reference = densely_edited_copy(peft_model, ["twice"])
    assert_close_relative(logits(peft_model), logits(reference))
    assert not torch.allclose(logits(peft_model), single)


def test_changing_the_edit_in_place_reaches_the_forward_pass():
    peft_model = random_edit("llama", seed=0)
    before = logits(peft_model)
    with torch.no_grad():
        for module in edit_layers(peft_model).values():
            module.steer2edit_lambda["default"].mul_(3.0)
    reference = densely_edited_copy(peft_model, ["default"])
    assert_close_relative(logits(peft_model), logits(reference))
    assert not torch.allclose(logits(peft_model), before)


def test_a_fresh_adapter_is_an_identity_edit_that_training_grows(tmp_path):
    from peft import PeftModel

    model = tiny_model("llama")
    base = logits(model)
    peft_model = get_peft_model(model, Steer2EditConfig(target_modules=["model.layers.1.self_attn.o_proj"]))
    torch.testing.assert_close(logits(peft_model), base)  # lambda = 0 on every head, u and k random unit vectors
    layer = peft_model.base_model.model.model.layers[1].self_attn.o_proj
    assert layer.steer2edit_indices["default"].tolist() == list(
        range(layer.in_features // layer.component_size["default"])
    )
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(sample_input()).logits.square().mean().backward()
        optimizer.step()
    trained = logits(peft_model)
    assert not torch.allclose(trained, base) and layer.steer2edit_lambda["default"].abs().min() > 0
    peft_model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path, is_trainable=True)
    torch.testing.assert_close(logits(reloaded), trained)
    assert all(p.requires_grad for n, p in reloaded.named_parameters() if "steer2edit_" in n)


def test_a_regex_target_made_in_python_is_saved_as_the_module_names_it_matched(tmp_path):
    import json

    torch.manual_seed(0)
    config = Steer2EditConfig(
        target_modules=r".*layers\.1\.(self_attn\.o_proj|mlp\.down_proj)",
        attention_modules=["self_attn.o_proj"],
        mlp_modules=["mlp.down_proj"],
        init_weights=False,
    )
    peft_model = get_peft_model(tiny_model("llama"), config)
    peft_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert saved == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.o_proj"]
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert torch.equal(logits(reloaded), logits(peft_model))
