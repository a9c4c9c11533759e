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


def equivalent_lora_config(
    ranks: Mapping[str, int], fan_in_fan_out: bool, base_model_name_or_path: str | None, task_type: Any
) -> LoraConfig:
    """The LoraConfig of the exact LoRA: each module at its own rank, scaling 1 everywhere."""
    top = max(ranks.values())
    return LoraConfig(
        r=top,
        lora_alpha=top,  # scaling lora_alpha / r = 1; alpha_pattern keeps it 1 where the rank differs
        target_modules=sorted(ranks),
        rank_pattern={name: rank for name, rank in ranks.items() if rank != top},
        alpha_pattern={name: rank for name, rank in ranks.items() if rank != top},
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type,
    )
