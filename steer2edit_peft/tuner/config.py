"""Steer2EditConfig: what a Steer2Edit adapter edits, how it was solved, and where it came from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig
from peft.utils import PeftType

from ..errors import AdapterValidationError
from ..version import __version__

FORMAT_VERSION = 1


def _family_is_on(rho: float | None) -> bool:
    return rho is not None and rho > 0


@dataclass
class Steer2EditConfig(PeftConfig):
    """Configuration of a Steer2Edit adapter: sparse, component-level, rank-1 weight edits.

    Each targeted module (an attention output projection or an MLP output projection) gets the edit
    ``W <- W + strength * sum_t u_t k_t^T``, where ``u_t`` is a unit output direction (the steering
    direction) and ``k_t`` is non-zero only on the input columns of the edited components: heads of
    ``head_dim`` columns for attention modules, single columns (neurons) for MLP modules. A solved edit
    has one term (rank one); combining adapters concatenates terms.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Modules to edit (names or suffixes, or one regex). Left empty: the attention and MLP "
            "output projections of every decoder layer, from `attention_modules`/`mlp_modules` or, when "
            "those are empty too, from the architecture table."
        },
    )
    attention_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Suffixes of attention output projections; edited per head of `head_dim` columns."},
    )
    mlp_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Suffixes of MLP output projections; edited per input column (neuron)."},
    )
    layers_to_transform: list[int] | int | None = field(
        default=None,
        metadata={
            "help": "Decoder layer indices to edit (PEFT's usual meaning); None edits every layer. Early layers "
            "of small models react badly to edits, so leaving them out often helps."
        },
    )
    layers_pattern: list[str] | str | None = field(
        default=None,
        metadata={"help": "Name of the layer list (e.g. 'layers', 'h') when `layers_to_transform` is set."},
    )
    head_dim: int | None = field(
        default=None, metadata={"help": "Input columns per attention head; read from the model config when None."}
    )
    rho_attn: float | None = field(
        default=0.45,
        metadata={"help": "Elastic-net strength for attention heads; None or <= 0 switches heads off."},
    )
    rho_mlp: float | None = field(
        default=0.5,
        metadata={"help": "Elastic-net strength for MLP neurons; None or <= 0 switches neurons off."},
    )
    alpha: float = field(
        default=0.75,
        metadata={"help": "Elastic-net mix in [0, 1): the L1 share, which sets the sparsity threshold rho*alpha."},
    )
    strength: float = field(
        default=1.0,
        metadata={"help": "Runtime multiplier: 0 = identity, 1 = as solved, negative = the reverse edit."},
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True when weights are stored (in, out), as in GPT-2's Conv1D; auto-set."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: an identity edit. False: random non-zero edits (for tests)."},
    )
    edited_components: dict[str, list[list[int]]] = field(
        default_factory=dict,
        metadata={
            "help": "Per module name, per rank-one term, the edited component indices (heads or neurons). "
            "Filled by the solver; readable without loading any model."
        },
    )
    base_model_signature: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Shape facts of the base model (hidden size, layers, heads...); checked on load."},
    )
    behaviour: str | None = field(default=None, metadata={"help": "Name of the edited behaviour."})
    probe_data: str | None = field(default=None, metadata={"help": "Description of the probe data used."})
    library_version: str = field(default=__version__, metadata={"help": "steer2edit-peft version that wrote it."})
    format_version: int = field(default=FORMAT_VERSION, metadata={"help": "On-disk format version."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.STEER2EDIT  # type: ignore[attr-defined]
        if self.format_version != FORMAT_VERSION:
            raise AdapterValidationError(
                f"unknown Steer2Edit format_version {self.format_version!r}; this steer2edit-peft "
                f"({__version__}) reads format_version {FORMAT_VERSION}. Upgrade steer2edit-peft."
            )
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {self.alpha}")
        if self.head_dim is not None and self.head_dim <= 0:
            raise ValueError(f"head_dim must be positive, got {self.head_dim}")
        for name in ("attention_modules", "mlp_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        if isinstance(self.layers_to_transform, (range, tuple)):
            self.layers_to_transform = list(self.layers_to_transform)
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if self.target_modules is None and (self.attention_modules or self.mlp_modules):
            self.target_modules = self.family_targets(self.attention_modules or [], self.mlp_modules or [])
        self.edited_components = {
            module: [[int(index) for index in term] for term in terms]
            for module, terms in self.edited_components.items()
        }

    def family_targets(self, attention: list[str], mlp: list[str]) -> list[str]:
        """The target list for the given families, leaving out a family whose rho switches it off."""
        targets = (attention if _family_is_on(self.rho_attn) else []) + (mlp if _family_is_on(self.rho_mlp) else [])
        if not targets:
            raise ValueError("both module families are switched off (rho_attn and rho_mlp are None or <= 0)")
        return targets

    def is_attention_module(self, module_name: str) -> bool:
        """Whether a module is edited per head (True) or per column (False)."""
        return any(
            module_name == suffix or module_name.endswith("." + suffix) for suffix in self.attention_modules or []
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> Steer2EditConfig:
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        # Remember where the weights live so loading can validate them before touching the model.
        path = os.path.join(pretrained_model_name_or_path, subfolder) if subfolder else pretrained_model_name_or_path
        hub_kwargs = {key: value for key, value in kwargs.items() if key in ("revision", "cache_dir", "token")}
        object.__setattr__(config, "_weights_source", (str(path), subfolder, hub_kwargs))
        return config
