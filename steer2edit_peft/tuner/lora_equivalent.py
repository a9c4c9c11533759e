"""A Steer2Edit edit as the LoRA adapter equal to it: factors and config, from an edit's tensors alone.

Per module the edit is ``delta W = strength * u^T K`` (see :func:`.layer.key_matrix`), so a LoRA with
``lora_A = K``, ``lora_B = strength * u^T`` and scaling 1 (``lora_alpha = r``) reproduces it to float32 rounding.
The export stage and the loading of an edit onto a LoRA-tuned model both build their LoRA here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig

from .layer import key_matrix


def lora_factors(
    tensors: Mapping[str, torch.Tensor], strength: float, in_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [terms, in], lora_B [out, terms]) in float32 of one module's Steer2Edit tensors (B @ A = delta W)."""
    u = tensors["steer2edit_u"].detach().float()
    key = key_matrix(
        tensors["steer2edit_k"].detach().float(),
        tensors["steer2edit_lambda"].detach().float(),
        tensors["steer2edit_indices"],
        tensors["steer2edit_term"],
        u.shape[0],
        in_features,
    )
    return key.contiguous(), (strength * u.T).contiguous()


def experts_lora_factors(
    tensors: Mapping[str, torch.Tensor], strength: float, experts: int, neurons: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [rank * experts, neurons], lora_B [out, rank * experts]) of a fused-experts edit, in the layout PEFT's
    LoRA gives a 3-D parameter (``target_parameters``): expert e's factors are rows ``e * rank + t`` of A and
    columns ``t * experts + e`` of B, so B_e A_e is expert e's slice of delta W. Terms beyond the edit's are zero."""
    key, scaled_u = lora_factors(tensors, strength, experts * neurons)  # [terms, experts * neurons], [out, terms]
    terms = key.shape[0]
    key = torch.cat([key, key.new_zeros(rank - terms, key.shape[1])])
    scaled_u = torch.cat([scaled_u, scaled_u.new_zeros(scaled_u.shape[0], rank - terms)], dim=1)
    lora_a = key.reshape(rank, experts, neurons).permute(1, 0, 2).reshape(experts * rank, neurons)
    lora_b = scaled_u[:, :, None].expand(-1, rank, experts).reshape(scaled_u.shape[0], rank * experts)
    return lora_a.contiguous(), lora_b.contiguous()


def equivalent_lora_config(
    ranks: Mapping[str, int],
    fan_in_fan_out: bool,
    base_model_name_or_path: str | None,
    task_type: Any,
    parameters: Mapping[str, int] | None = None,
) -> LoraConfig:
    """The LoraConfig of the exact LoRA: each module at its own rank, scaling 1 everywhere. ``parameters``: modules
    adapted through a parameter (PEFT's ``target_parameters``: ``experts.down_proj`` of fused experts, or the
    ``weight`` of a linear layer that PEFT's target_modules would misread), each at the config's one rank."""
    top = max([*ranks.values(), *(parameters or {}).values()])
    return LoraConfig(
        r=top,
        lora_alpha=top,  # scaling lora_alpha / r = 1; alpha_pattern keeps it 1 where the rank differs
        target_modules=sorted(ranks),
        target_parameters=sorted(parameters or {}) or None,
        rank_pattern={name: rank for name, rank in ranks.items() if rank != top},
        alpha_pattern={name: rank for name, rank in ranks.items() if rank != top},
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
    )
