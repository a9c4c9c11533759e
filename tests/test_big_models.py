"""Big-model paths on tiny models: layers offloaded to disk by accelerate, and quantized base layers."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from reference import assert_close_relative
from tiny_models import CharTokenizer, offloaded_llama, sample_input, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

from steer2edit_peft import ContrastiveDataset, Steer2EditConfig, edit_model, extract_steering_vectors

DATA = ContrastiveDataset.from_lists(["ab", "cd"], ["no!", "never"], ["ef", "gh"], ["yes ok", "sure"])
CONFIG = Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5)


def test_solve_apply_and_merge_on_a_model_with_a_layer_offloaded_to_disk(tmp_path):
    offloaded = offloaded_llama(tmp_path)
    assert offloaded.model.layers[1].self_attn.o_proj.weight.device.type == "meta"
    vectors = extract_steering_vectors(offloaded, CharTokenizer(), DATA, show_progress=False)
    reference = edit_model(tiny_model("llama"), vectors, CONFIG)
    edited = edit_model(offloaded, vectors, CONFIG)
    assert any(".layers.1." in m.module and m.num_edited for m in edited.edit_reports["default"].modules)
    # The edit's own tensors are real (on the execution device), not parked on "meta" with the weights.
    layer = edited.base_model.model.model.layers[1].self_attn.o_proj
    assert layer.steer2edit_u["default"].device.type == "cpu"
    assert layer.get_base_layer().weight.device.type == "meta"
    x = sample_input()
    with torch.no_grad():
        assert_close_relative(edited(x).logits, reference(x).logits)
        merged = edited.merge_and_unload()
        assert_close_relative(merged(x).logits, reference(x).logits)


class Int8Linear(nn.Linear):
    """A stand-in for a quantized linear layer (as bitsandbytes' are: an nn.Linear with a non-float weight)."""

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        scale = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127
        self.weight = nn.Parameter(torch.round(linear.weight.detach() / scale).to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale

    def forward(self, x):
        return nn.functional.linear(x, self.dequantized().to(x.dtype), self.bias)


def quantize(model):
    for layer in model.model.layers:
        layer.self_attn.o_proj = Int8Linear(layer.self_attn.o_proj)
        layer.mlp.down_proj = Int8Linear(layer.mlp.down_proj)
    return model


def test_the_edit_applies_unmerged_on_quantized_layers_and_merging_is_refused():
    torch.manual_seed(0)
    quantized = quantize(tiny_model("llama"))
    peft_model = get_peft_model(quantized, Steer2EditConfig(init_weights=False))
    reference = tiny_model("llama")
    with torch.no_grad():
        for name, module in peft_model.base_model.model.named_modules():
            if hasattr(module, "get_delta_weight") and isinstance(module.get_base_layer(), Int8Linear):
                target = reference.get_submodule(name)
                target.weight.copy_(module.get_base_layer().dequantized() + module.get_delta_weight("default"))
    with torch.no_grad():
        assert_close_relative(peft_model(sample_input()).logits, reference(sample_input()).logits)
    with pytest.raises(TypeError, match="cannot merge into a quantized Int8Linear"):
        peft_model.merge_adapter()


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_base_applies_the_edit_unmerged_and_refuses_to_merge(bits, tmp_path):
    pytest.importorskip("bitsandbytes")
    from reference import dense_edit
    from transformers import BitsAndBytesConfig

    # 4-bit blocks hold 64 weights: every dimension a multiple of 64.
    tiny_model("llama", hidden_size=64, intermediate_size=128).save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4)
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization)
    torch.manual_seed(0)
    peft_model = get_peft_model(quantized, Steer2EditConfig(init_weights=False))
    layer = peft_model.base_model.model.model.layers[0].mlp.down_proj
    assert type(layer.get_base_layer()).__name__ == ("Linear8bitLt" if bits == 8 else "Linear4bit")
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        added = layer(x).float() - layer.get_base_layer()(x).float()
    assert_close_relative(added, (x.double() @ dense_edit(layer, "default").T).float(), rtol=1e-3)
    with torch.no_grad():
        assert torch.isfinite(peft_model(sample_input()).logits).all()
    with pytest.raises(TypeError, match="cannot merge into a quantized"):
        peft_model.merge_adapter()
