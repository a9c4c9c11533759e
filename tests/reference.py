"""Slow, obviously-correct references the fast paths are checked against."""

from __future__ import annotations

import copy

import torch
from transformers.pytorch_utils import Conv1D

from steer2edit_peft.tuner import Steer2EditLayer


def dense_edit(layer: Steer2EditLayer, adapter_name: str) -> torch.Tensor:
    """delta W [out, in] = strength * sum_c lambda_c * u_{term(c)} k_c^T on component c's columns, by loops."""
    u = layer.steer2edit_u[adapter_name].double()
    k = layer.steer2edit_k[adapter_name].double()
    magnitudes = layer.steer2edit_lambda[adapter_name].double()
    indices = layer.steer2edit_indices[adapter_name].tolist()
    terms = layer.steer2edit_term[adapter_name].tolist()
    size = layer.component_size[adapter_name]
    delta = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    for c, (component, term) in enumerate(zip(indices, terms)):
        for offset in range(size):
            column = component * size + offset
            for row in range(layer.out_features):
                delta[row, column] += magnitudes[c] * u[term, row] * k[c, offset]
    return layer.strength[adapter_name] * delta


def densely_edited_copy(peft_model, adapter_names: list[str]):
    """A plain copy of the base model whose weights are W + the hand-written dense edits."""
    edits = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, Steer2EditLayer):
            edits[name] = sum(dense_edit(module, a) for a in adapter_names if a in module.steer2edit_u)
    plain = copy.deepcopy(peft_model.base_model.model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, Steer2EditLayer):
            parent_name, _, child = name.rpartition(".")
            base = module.get_base_layer()
            delta = edits[name]
            with torch.no_grad():
                if hasattr(base, "is_transposed"):
                    add_to_experts(base, delta)
                elif isinstance(base, Conv1D):
                    base.weight += delta.T.to(base.weight.dtype)
                else:
                    base.weight += delta.to(base.weight.dtype)
            setattr(plain.get_submodule(parent_name), child, base)
    return plain


def add_to_experts(experts, delta: torch.Tensor) -> None:
    """Column c = e * neurons + n of a fused down projection's delta [hidden, experts * neurons] added to expert
    e's weight for neuron n, by loops; the model's own forward then routes as it always does."""
    weight = experts.down_proj
    neurons = weight.shape[1] if experts.is_transposed else weight.shape[2]
    for column in range(delta.shape[1]):
        if not delta[:, column].any():
            continue
        expert, neuron = divmod(column, neurons)
        for row in range(delta.shape[0]):
            if experts.is_transposed:
                weight[expert, neuron, row] += delta[row, column].to(weight.dtype)
            else:
                weight[expert, row, neuron] += delta[row, column].to(weight.dtype)


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """max |a - e| <= rtol * max |e| (a relative bound that ignores entries that happen to be near zero)."""
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert error <= rtol * scale, f"max abs error {error:.3e} exceeds {rtol:g} x {scale:.3e}"
