"""Loading refuses bad adapters with one clear error and leaves the model as it was."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import sample_input, tiny_model

from steer2edit_peft import AdapterValidationError, Steer2EditConfig
from steer2edit_peft.tuner import Steer2EditLayer

O_PROJ = "base_model.model.model.layers.0.self_attn.o_proj"


@pytest.fixture
def saved_adapter(tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    peft_model.save_pretrained(tmp_path)
    return tmp_path


def edit_json(path, change):
    config_path = path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    change(config)
    config_path.write_text(json.dumps(config))


def edit_tensors(path, change):
    weights_path = path / "adapter_model.safetensors"
    tensors = load_file(weights_path)
    change(tensors)
    save_file(tensors, weights_path)


def assert_refused_and_untouched(model, path, match, **kwargs):
    before = model(sample_input()).logits.detach()
    with pytest.raises(AdapterValidationError, match=match):
        PeftModel.from_pretrained(model, path, **kwargs)
    assert not any(isinstance(m, Steer2EditLayer) for m in model.modules())
    torch.testing.assert_close(model(sample_input()).logits, before)


def test_another_hidden_size_is_refused(saved_adapter):
    assert_refused_and_untouched(
        tiny_model("llama", hidden_size=48), saved_adapter, "hidden_size: adapter 32 vs model 48"
    )


def test_another_layer_count_is_refused(saved_adapter):
    assert_refused_and_untouched(tiny_model("llama", num_hidden_layers=3), saved_adapter, "num_hidden_layers")


def test_another_head_layout_is_refused(saved_adapter):
    model = tiny_model("llama", num_attention_heads=2, num_key_value_heads=1)
    assert_refused_and_untouched(
        model, saved_adapter, "head_dim: adapter 8 vs model 16, num_attention_heads: adapter 4 vs model 2"
    )


def test_out_of_range_component_index_is_refused(saved_adapter):
    edit_json(saved_adapter, lambda c: c["edited_components"]["model.layers.0.self_attn.o_proj"][0].append(4))
    assert_refused_and_untouched(
        tiny_model("llama"), saved_adapter, r"layers\.0\.self_attn\.o_proj.*out of range \[0, 4\)"
    )


def test_unknown_edited_module_is_refused(saved_adapter):
    edit_json(saved_adapter, lambda c: c["edited_components"].update({"model.layers.9.mlp.down_proj": [[1]]}))
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "does not have.*layers.9")


def test_nan_values_are_refused(saved_adapter):
    def poison(tensors):
        tensors[f"{O_PROJ}.steer2edit_lambda"][0] = float("nan")

    edit_tensors(saved_adapter, poison)
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, rf"{O_PROJ}\.steer2edit_lambda: holds NaN")


def test_missing_tensor_is_refused(saved_adapter):
    edit_tensors(saved_adapter, lambda t: t.pop(f"{O_PROJ}.steer2edit_u"))
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "lack 1 tensor.*o_proj.steer2edit_u")


def test_extra_tensor_is_refused(saved_adapter):
    edit_tensors(saved_adapter, lambda t: t.update({f"{O_PROJ}.steer2edit_extra": torch.zeros(2)}))
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "unexpected tensor.*steer2edit_extra")


def test_misshapen_tensor_is_refused(saved_adapter):
    edit_tensors(saved_adapter, lambda t: t.update({f"{O_PROJ}.steer2edit_u": torch.zeros(1, 31)}))
    assert_refused_and_untouched(
        tiny_model("llama"), saved_adapter, r"steer2edit_u: shape \(1, 31\).*expected \(1, 32\)"
    )


def test_truncated_file_is_refused(saved_adapter):
    weights_path = saved_adapter / "adapter_model.safetensors"
    weights_path.write_bytes(weights_path.read_bytes()[:-100])
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "truncated or not a valid safetensors")


def test_unknown_format_version_is_refused(saved_adapter):
    edit_json(saved_adapter, lambda c: c.update(format_version=99))
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "unknown Steer2Edit format_version 99")


def test_validation_also_guards_a_config_passed_by_hand(saved_adapter):
    # With a config object given directly the weights are checked while loading; the model is restored.
    config = Steer2EditConfig(
        **{k: v for k, v in json.loads((saved_adapter / "adapter_config.json").read_text()).items() if k != "peft_type"}
    )
    edit_tensors(saved_adapter, lambda t: t[f"{O_PROJ}.steer2edit_k"].fill_(float("inf")))
    assert_refused_and_untouched(tiny_model("llama"), saved_adapter, "holds NaN/inf", config=config)


def test_alpha_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="alpha must lie in"):
        Steer2EditConfig(alpha=1.0)


def test_a_saved_adapter_is_not_modified_by_a_failed_load(saved_adapter):
    files = {p.name: p.read_bytes() for p in saved_adapter.iterdir()}
    with pytest.raises(AdapterValidationError):
        PeftModel.from_pretrained(tiny_model("llama", hidden_size=48), saved_adapter)
    assert {p.name: p.read_bytes() for p in saved_adapter.iterdir()} == files
