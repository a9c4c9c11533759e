"""transformers' fused experts: one ``[experts, ...]`` parameter per projection, no nn.Linear per expert.

A module decorated with transformers' ``use_experts_implementation`` says how its experts compute
(``has_gate``, ``has_bias``, ``is_transposed``, ``is_concatenated``, ``_apply_gate``), and is called with
``(hidden_states [tokens, hidden], top_k_index [tokens, k], top_k_weights [tokens, k])``. Its output is
``sum_slots weight * (down_proj[e] x_e + b)``, where ``x_e`` is expert e's input to its down projection: linear in
each column of ``down_proj[e]``, so an edit of those columns adds ``weight * (x_e . k) u`` per routed slot.

A component of a fused down projection is a neuron of one expert, ``(expert e, neuron n)``, numbered ``e * I + n``
(I: neurons per expert): in that numbering the parameter is one [hidden, experts * I] matrix whose column c is
``down_proj[c // I][:, c % I]`` (``[c // I, c % I, :]`` when stored transposed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_fused_experts(module: nn.Module) -> bool:
    """transformers' fused experts whose output is linear in their down projection: no norm after it, whether the
    module declares one (``has_post_expert_norm``) or just holds one (a child module named like a norm)."""
    weight = getattr(module, "down_proj", None)
    return (
        isinstance(weight, nn.Parameter)
        and weight.ndim == 3
        and hasattr(module, "is_transposed")
        and not getattr(module, "has_post_expert_norm", False)
        and not any("norm" in name.lower() for name, _ in module.named_children())
    )


def experts_shape(module: Any) -> tuple[int, int, int]:
    """(experts, neurons per expert, hidden size) of fused experts."""
    experts, first, second = module.down_proj.shape
    return (int(experts), int(first), int(second)) if module.is_transposed else (int(experts), int(second), int(first))


def down_columns(module: Any) -> torch.Tensor:
    """The down projection as one [hidden, experts * neurons] matrix (a copy), columns numbered as above."""
    weight = module.down_proj.detach()
    layout = weight.permute(2, 0, 1) if module.is_transposed else weight.permute(1, 0, 2)
    return layout.reshape(weight.shape[2] if module.is_transposed else weight.shape[1], -1)


def expert_input(module: Any, states: torch.Tensor, expert: int, neurons: torch.Tensor | None = None) -> torch.Tensor:
    """Expert ``expert``'s input to its down projection for ``states`` [rows, hidden]: [rows, neurons] (only the
    given neurons, computed from their own gate and up rows, when ``neurons`` is set), as its forward computes it."""
    has_gate = module.has_gate
    weight = module.gate_up_proj[expert] if has_gate else module.up_proj[expert]
    bias_name = "gate_up_proj_bias" if has_gate else "up_proj_bias"
    bias = getattr(module, bias_name)[expert] if module.has_bias else None
    if neurons is not None:
        rows = neurons
        if has_gate:
            half = module.down_proj.shape[1] if module.is_transposed else module.down_proj.shape[2]
            pairs = (neurons, neurons + half) if module.is_concatenated else (2 * neurons, 2 * neurons + 1)
            # The same layout as the whole projection's, so the module's own gate reads it unchanged.
            rows = torch.cat(pairs) if module.is_concatenated else torch.stack(pairs, dim=1).reshape(-1)
        weight = weight.index_select(1 if module.is_transposed else 0, rows)
        bias = None if bias is None else bias.index_select(0, rows)
    projected = states @ weight if module.is_transposed else states @ weight.T
    if bias is not None:
        projected = projected + bias
    return module._apply_gate(projected) if has_gate else module.act_fn(projected)
