"""Exact LoRA export: outputs equal the Steer2Edit adapter's, without steer2edit_peft, and in PEFT's LoRA stack."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from reference import assert_close_relative
from safetensors.torch import save_file
from tiny_models import sample_input, tiny_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.core.errors import Steer2EditError
from steer2edit_peft.export import to_lora


def random_edit(name: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model(name), Steer2EditConfig(init_weights=False, **config))
    model.base_model.set_strength(0.7)
    return model


def logits(model, x=None):
    with torch.no_grad():
        return model(sample_input() if x is None else x).logits


@pytest.mark.parametrize("name", ["llama", "qwen3", "gpt2", "gpt_neox"])
def test_exported_lora_gives_the_same_outputs(name, tmp_path):
    edited = random_edit(name)
    expected = logits(edited)
    config, state = to_lora(edited, output=tmp_path)
    assert config.r == 1 and all(v.dtype == torch.float32 for v in state.values())
    lora = PeftModel.from_pretrained(tiny_model(name), tmp_path)
    assert lora.peft_config["default"].peft_type == "LORA"
    assert_close_relative(logits(lora), expected)
    merged = lora.merge_and_unload()
    assert_close_relative(logits(merged), expected)


def test_a_combined_edit_exports_with_its_rank_and_pads_to_a_uniform_rank(tmp_path):
    edited = random_edit("llama")
    edited.add_adapter("other", Steer2EditConfig(init_weights=False))
    edited.base_model.add_weighted_adapter(["default", "other"], [1.0, 0.5], "combo")
    edited.set_adapter("combo")
    expected = logits(edited)
    config, _ = to_lora(edited, "combo", output=tmp_path / "native")
    assert config.r == 2
    padded, state = to_lora(edited, "combo", output=tmp_path / "padded", rank=8)
    assert padded.r == 8 and not padded.rank_pattern
    assert all(t.shape[0] == 8 for k, t in state.items() if "lora_A" in k)
    for folder in ("native", "padded"):
        assert_close_relative(logits(PeftModel.from_pretrained(tiny_model("llama"), tmp_path / folder)), expected)
    with pytest.raises(Steer2EditError, match="more than the asked rank 1"):
        to_lora(edited, "combo", rank=1)


def test_exported_lora_loads_in_a_process_that_never_imports_steer2edit(tmp_path):
    edited = random_edit("llama")
    to_lora(edited, output=tmp_path / "lora")
    tiny_model("llama").save_pretrained(tmp_path / "base")
    x = sample_input()
    save_file({"x": x, "expected": logits(edited, x)}, str(tmp_path / "check.safetensors"))
    script = textwrap.dedent(f"""
        import sys
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
        check = load_file({str(tmp_path / "check.safetensors")!r})
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(tmp_path / "base")!r}), {str(tmp_path / "lora")!r})
        with torch.no_grad():
            error = (model(check["x"]).logits - check["expected"]).abs().max().item()
        assert not any(name.startswith("steer2edit") for name in sys.modules), "steer2edit_peft was imported"
        print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


def test_edit_stacks_with_a_lora_fine_tune_in_one_peft_model(tmp_path):
    """The documented stacking path: the edit as a second LoRA adapter, both active, either merge order."""
    torch.manual_seed(3)
    fine_tune = get_peft_model(
        tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "o_proj", "down_proj"], init_lora_weights=False)
    )
    fine_tune.save_pretrained(tmp_path / "fine-tune")
    edited = random_edit("llama")
    to_lora(edited, output=tmp_path / "edit")

    stacked = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "fine-tune", adapter_name="fine-tune")
    stacked.load_adapter(tmp_path / "edit", adapter_name="edit")
    stacked.base_model.set_adapter(["fine-tune", "edit"])

    # Dense reference: base weights plus both deltas.
    reference = tiny_model("llama")
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, torch.nn.Linear):
                wrapped = stacked.base_model.model.get_submodule(name)
                for adapter in ("fine-tune", "edit"):
                    if hasattr(wrapped, "lora_A") and adapter in wrapped.lora_A:
                        module.weight += wrapped.get_delta_weight(adapter)
    assert_close_relative(logits(stacked), logits(reference))

    merged_weights = []
    for order in (["fine-tune", "edit"], ["edit", "fine-tune"]):
        model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / order[0], adapter_name=order[0])
        model.load_adapter(tmp_path / order[1], adapter_name=order[1])
        model.base_model.set_adapter(order)
        merged_weights.append(model.merge_and_unload().state_dict())
    for key, value in merged_weights[0].items():
        torch.testing.assert_close(value, merged_weights[1][key], atol=1e-6, rtol=1e-6)


def test_export_of_an_adapter_that_edits_nothing_is_refused():
    targets = ["model.layers.0.self_attn.o_proj", "model.layers.1.mlp.down_proj"]
    config = Steer2EditConfig(target_modules=targets, edited_components={m: [[]] for m in targets})
    model = get_peft_model(tiny_model("llama"), config)
    with pytest.raises(Steer2EditError, match="nothing to export"):
        to_lora(model)


def test_export_records_where_it_came_from(tmp_path):
    to_lora(random_edit("llama", behaviour="refusal"), output=tmp_path)
    provenance = json.loads((tmp_path / "steer2edit_export.json").read_text())
    assert provenance["behaviour"] == "refusal" and all(rank == 1 for rank in provenance["ranks"].values())


def test_an_edit_solved_on_a_lora_fine_tune_stacks_as_a_second_lora():
    from tiny_models import CharTokenizer

    from steer2edit_peft import ContrastiveDataset, extract_steering_vectors
    from steer2edit_peft.export import edit_as_lora
    from steer2edit_peft.solver.edit import edit_model
    from steer2edit_peft.solver.scores import solve_edit

    torch.manual_seed(3)
    lora_config = LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights=False)
    fine_tuned = get_peft_model(tiny_model("llama"), lora_config)
    data = ContrastiveDataset.from_lists(["ab", "cd"], ["no!", "never"], ["ef", "gh"], ["yes ok", "sure"])
    vectors = extract_steering_vectors(fine_tuned, CharTokenizer(), data, show_progress=False)
    config = Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5)
    edits = {e.module: e for e in solve_edit(fine_tuned, vectors, config) if e.indices.numel()}

    with pytest.warns(UserWarning, match="carry both the LoRA fine-tune and the edit"):
        stacked = edit_as_lora(fine_tuned, vectors, config)
    assert stacked.base_model.active_adapters == ["default", "edit"]

    # Reference 1, by loops: base + LoRA delta + sum_c lambda_c u k_c^T on component c's columns.
    reference = tiny_model("llama")
    head_dim = 8
    with torch.no_grad():
        for name, module in reference.named_modules():
            wrapped = stacked.base_model.model.get_submodule(name) if isinstance(module, torch.nn.Linear) else None
            if wrapped is None:
                continue
            if hasattr(wrapped, "lora_A") and "default" in wrapped.lora_A:
                module.weight += wrapped.get_delta_weight("default")
            if name in edits:
                edit = edits[name]
                size = head_dim if edit.is_attention else 1
                for c, component in enumerate(edit.indices.tolist()):
                    for offset in range(size):
                        column = component * size + offset
                        module.weight[:, column] += (
                            edit.magnitudes[c] * edit.direction * edit.input_directions[c, offset]
                        )
    assert_close_relative(logits(stacked), logits(reference))

    # Reference 2: the same edit solved on the merged fine-tune, as a Steer2Edit adapter.
    torch.manual_seed(3)
    merged = get_peft_model(tiny_model("llama"), lora_config).merge_and_unload()
    on_merged = edit_model(merged, vectors, config)
    assert_close_relative(logits(stacked), logits(on_merged), rtol=1e-4)


def test_exported_lora_has_the_layout_multi_lora_servers_read(tmp_path):
    from safetensors import safe_open

    to_lora(random_edit("llama"), output=tmp_path, rank=8)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 8
    assert not config["rank_pattern"] and not config["alpha_pattern"] and not config.get("modules_to_save")
    assert config["bias"] == "none"
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == {"o_proj", "down_proj"}
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118
            assert key.startswith("base_model.model.model.layers.") and key.endswith(
                (".lora_A.weight", ".lora_B.weight")
            )
            shape = handle.get_slice(key).get_shape()
            assert shape[0] == 8 if ".lora_A." in key else shape[1] == 8


def test_exported_edits_hotswap_in_a_loaded_lora_model(tmp_path):
    from peft.utils.hotswap import hotswap_adapter

    first, second = random_edit("llama", seed=0), random_edit("llama", seed=1)
    to_lora(first, output=tmp_path / "first", rank=4)
    to_lora(second, output=tmp_path / "second", rank=4)
    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "first")
    assert_close_relative(logits(model), logits(first))
    hotswap_adapter(model, str(tmp_path / "second"), adapter_name="default")
    assert_close_relative(logits(model), logits(second))


def test_edit_model_on_a_lora_model_points_to_edit_as_lora():
    from tiny_models import CharTokenizer

    from steer2edit_peft import ContrastiveDataset, edit_model, extract_steering_vectors

    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    data = ContrastiveDataset.from_lists(["a"], ["b"], ["c"], ["d"])
    vectors = extract_steering_vectors(lora, CharTokenizer(), data, show_progress=False)
    with pytest.raises(Steer2EditError, match="use steer2edit_peft.export.edit_as_lora"):
        edit_model(lora, vectors, Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5))
