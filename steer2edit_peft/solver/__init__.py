"""From steering vectors to an adapter: settings, scores (the formulas), calibration, sanity check, edit."""

from .calibrate import BudgetError, Calibration, calibrate, kl_meter, largest_within, rescaled, with_sparsity_cap
from .edit import edit_model
from .sanity import DegenerateEditError, check_sanity
from .scores import (
    ModuleEdit,
    contrast_keys,
    effective_weight,
    elastic_net_magnitude,
    head_scores,
    neuron_scores,
    solve_edit,
    solve_module,
)
from .settings import DEFAULTS, PAPER, EditSettings, adapter_config, default_first_layer, edit_config_from

__all__ = [
    "DEFAULTS",
    "PAPER",
    "BudgetError",
    "Calibration",
    "DegenerateEditError",
    "EditSettings",
    "ModuleEdit",
    "adapter_config",
    "calibrate",
    "kl_meter",
    "check_sanity",
    "contrast_keys",
    "default_first_layer",
    "edit_config_from",
    "edit_model",
    "effective_weight",
    "elastic_net_magnitude",
    "head_scores",
    "largest_within",
    "neuron_scores",
    "rescaled",
    "solve_edit",
    "solve_module",
    "with_sparsity_cap",
]
