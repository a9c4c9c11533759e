"""EditSettings (every default, in core.settings) turned into the adapter config the solver works from."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..core.settings import DEFAULTS, PAPER, EditSettings, default_first_layer
from ..tuner import Steer2EditConfig

__all__ = ["DEFAULTS", "PAPER", "EditSettings", "adapter_config", "default_first_layer", "edit_config_from"]


def adapter_config(settings: EditSettings, num_layers: int) -> Steer2EditConfig:
    """The Steer2Edit config of these settings on a model of ``num_layers`` layers."""
    first = settings.first_edited_layer(num_layers)
    return Steer2EditConfig(
        rho_attn=settings.rho_attn,
        rho_mlp=settings.rho_mlp,
        alpha=settings.alpha,
        layers_to_transform=list(range(first, num_layers)) if first > 0 else None,
        key_direction=settings.key_direction,
    )


def edit_config_from(params: dict[str, Any], num_layers: int, settings: EditSettings = DEFAULTS) -> Steer2EditConfig:
    """The config of ``settings`` with some of them replaced (a sweep trial's rho_attn, rho_mlp, alpha, first_layer);
    a first layer past the last one is read as the last one."""
    changed = replace(settings, **params)
    if changed.first_layer is not None and changed.first_layer >= num_layers:
        changed = replace(changed, first_layer=num_layers - 1)
    return adapter_config(changed, num_layers)
