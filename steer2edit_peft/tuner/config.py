"""Steer2EditConfig: what a Steer2Edit adapter edits, how it was solved, and where it came from."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from peft.config import PeftConfig
from peft.utils import PeftType

from ..core.errors import AdapterValidationError, refuse_reload
from ..core.files import write_text
from ..core.settings import PAPER
from ..version import __version__
from .checkpoint import WEIGHTS_NAME, check_saved_keys, check_weights, locate_weights, read_weights, tensor_digest
from .config_rules import CONFIG_NAME, check_saved_config, field_problems, read_config_file

refuse_reload(globals())

FORMAT_VERSION = 2
# A load re-reads config and weights this often when they disagree, which happens only while a save is swapping in.
_CONSISTENT_READ_ATTEMPTS = 5


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

    A config built by hand defaults to the paper's method (``steer2edit_peft.PAPER``: both families, the paper's
    keys); the defaults of an edit, which ``edit_model`` and ``steer2edit edit`` use, are ``steer2edit_peft.DEFAULTS``.
    Both live in ``core/settings.py``.
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
        default=None,
        metadata={"help": "Input columns per attention head; read from the model (its attention modules) when None."},
    )
    head_dims: dict[str, int] = field(
        default_factory=dict,
        metadata={
            "help": "Per attention module whose heads are not `head_dim` wide (full module names): its head size. "
            "Filled from the model when head_dim is None, for models whose layers differ (hybrid attention, "
            "per-layer head sizes)."
        },
    )
    rho_attn: float | None = field(
        default=PAPER.rho_attn,
        metadata={"help": "Elastic-net strength for attention heads; None or <= 0 switches heads off."},
    )
    rho_mlp: float | None = field(
        default=PAPER.rho_mlp,
        metadata={"help": "Elastic-net strength for MLP neurons; None or <= 0 switches neurons off."},
    )
    alpha: float = field(
        default=PAPER.alpha,
        metadata={"help": "Elastic-net mix in [0, 1): the L1 share, which sets the sparsity threshold rho*alpha."},
    )
    key_direction: str = field(
        default=PAPER.key_direction,
        metadata={
            "help": "Input direction k of an edited head. 'weight' (the paper): normalize(W_j^T v_hat), the input "
            "that writes most along v. 'contrast': the head's mean input on the probe minus its mean input on "
            "reference (benign) data, made orthogonal to the latter, so the edit is silent on average benign input. "
            "'selective': the input direction that best tells probe prompts from reference prompts per unit of "
            "firing on the reference's prompts and answers, firing below zero on the mean reference input "
            "(solver.scores.selective_keys); heads are then chosen by how selective their key is."
        },
    )
    positions: str | None = field(
        default=None,
        metadata={"help": "Where the steering vector (mean outputs) was read: 'predicting', 'response', 'decision'."},
    )
    input_positions: str | None = field(
        default=None,
        metadata={"help": "Where the mean inputs (scores, keys) were read; recorded from the steering vectors."},
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
    fused_experts: dict[str, list[int]] = field(
        default_factory=dict,
        metadata={
            "help": "Per fused-experts module (full names): [experts, neurons per expert]. Its components are "
            "numbered expert * neurons + neuron (docs/FORMAT.md); filled from the model and checked on load."
        },
    )
    edited_components: dict[str, list[list[int]]] = field(
        default_factory=dict,
        metadata={
            "help": "Per module name, per rank-one term, the edited component indices (heads or neurons). "
            "Filled by the solver; readable without loading any model."
        },
    )
    gates: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "Per MLP output projection holding a gate (full names): the repurposed neuron, the modules whose "
            "row of it the edit rewrites (gate_module, up_module; each row one component of row_width input "
            "columns), the amount, and the share of the probe's decision "
            "tokens and of the reference's tokens its detector reads above threshold (solver/gates.py). Filled by "
            "the solver; what `steer2edit inspect` explains."
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
    tensor_digest: str | None = field(
        default=None,
        metadata={
            "help": "sha256 of the saved tensors, written by save_pretrained; a load refuses weights that do not "
            "match it (a config and weights from two different saves)."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Extra modules trained in full and saved with the adapter (PEFT's usual meaning)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.STEER2EDIT  # type: ignore[attr-defined]
        # Conveniences for configs written by hand; files hold only JSON types, checked strictly below.
        for name in ("attention_modules", "mlp_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
            elif isinstance(value, (set, tuple)):
                setattr(self, name, sorted(value))
        if isinstance(self.layers_to_transform, (range, tuple)):
            self.layers_to_transform = list(self.layers_to_transform)
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        problems = field_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise AdapterValidationError("Steer2EditConfig: " + "; ".join(problems))
        if self.format_version != FORMAT_VERSION:
            raise AdapterValidationError(
                f"unknown Steer2Edit format_version {self.format_version!r}; this steer2edit-peft "
                f"({__version__}) reads format_version {FORMAT_VERSION} (adapters of format 1 must be solved or "
                "saved again)"
            )
        unedited = [
            name
            for down, record in self.gates.items()
            for name in (down, record["gate_module"], record["up_module"])
            if name not in self.edited_components
        ]
        if unedited:
            raise AdapterValidationError(f"Steer2EditConfig: gates name modules the edit does not edit: {unedited[:3]}")
        if self.target_modules is None and (self.attention_modules or self.mlp_modules):
            self.target_modules = self.family_targets(self.attention_modules or [], self.mlp_modules or [])

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

    def gate_row_width(self, module_name: str) -> int | None:
        """The width of the row a gate rewrites in this module (one component), or None: no gate's gate or up module."""
        for record in self.gates.values():
            if module_name in (record["gate_module"], record["up_module"]):
                return record["row_width"]
        return None

    def component_size(self, module_name: str) -> int:
        """Input columns per edited component of a module: its head size, 1 (a neuron), or a gate's whole row."""
        row_width = self.gate_row_width(module_name)
        if row_width is not None:
            return row_width
        if not self.is_attention_module(module_name):
            return 1
        size = self.head_dims.get(module_name, self.head_dim)
        if size is None:
            raise AdapterValidationError(f"{module_name}: an attention module, but no head_dim is known")
        return size

    def check_strength(self, strength: Any) -> float:
        """A runtime multiplier, refused unless finite and within the documented bound."""
        problems = field_problems({"strength": strength})
        if problems:
            raise AdapterValidationError(f"set_strength: {problems[0]}")
        return float(strength)

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Write adapter_config.json whole (core/files.py), recording the digest of the weights saved beside it."""
        directory = Path(save_directory)
        weights = directory / WEIGHTS_NAME
        self.tensor_digest = tensor_digest(read_weights(weights)) if weights.is_file() else None
        with tempfile.TemporaryDirectory(prefix="steer2edit-config-") as scratch:
            super().save_pretrained(scratch, **kwargs)  # PEFT's own JSON layout, written where nothing else lives
            text = (Path(scratch) / CONFIG_NAME).read_text(encoding="utf-8")
        write_text(directory / CONFIG_NAME, text)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> Steer2EditConfig:
        """Read a saved adapter's config and weights, and check both before any model is touched.

        The validated tensors stay with the config, so the load that follows uses exactly them: a save that
        replaces the folder meanwhile cannot slip other weights in.
        """
        source = str(pretrained_model_name_or_path)
        hub_kwargs = {key: value for key, value in kwargs.items() if key in ("revision", "cache_dir", "token")}
        hub_kwargs.update({key: kwargs[key] for key in ("local_files_only", "force_download") if key in kwargs})
        for _attempt in range(_CONSISTENT_READ_ATTEMPTS):
            config_file = _locate_config(source, subfolder, hub_kwargs)
            content = read_config_file(config_file)
            weights_file = locate_weights(source, subfolder, hub_kwargs)
            config = cls._from_saved(content, config_file)
            state = read_weights(weights_file)
            check_saved_keys(state, str(weights_file))
            try:
                check_weights(
                    state,
                    config.edited_components,
                    config.strength,
                    config.tensor_digest,
                    str(weights_file),
                    modules_to_save=config.modules_to_save,
                )
            except AdapterValidationError:
                if (
                    _attempt + 1 < _CONSISTENT_READ_ATTEMPTS
                    and config_file.parent.is_dir()
                    and not _is_hub_cache(config_file)
                ):
                    continue  # a save may have swapped the folder between the two reads: read both again
                raise
            object.__setattr__(config, "_validated_weights", state)
            object.__setattr__(config, "_loaded_from", str(config_file.parent))
            return config
        raise AssertionError("unreachable")

    @classmethod
    def _from_saved(cls, content: dict[str, Any], config_file: Path) -> Steer2EditConfig:
        known = {f.name for f in fields(cls)}
        check_saved_config(content, known, str(config_file))
        try:
            return cls(**{key: value for key, value in content.items() if key != "peft_type"})
        except AdapterValidationError as error:
            raise AdapterValidationError(f"{config_file}: {error}") from error


def _is_hub_cache(path: Path) -> bool:
    return "snapshots" in path.parts


def _locate_config(source: str, subfolder: str | None, hub_kwargs: dict[str, Any]) -> Path:
    folder = Path(source) / subfolder if subfolder else Path(source)
    if folder.is_dir():
        return folder / CONFIG_NAME
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, CONFIG_NAME, subfolder=subfolder, **hub_kwargs))
    except Exception as error:
        raise AdapterValidationError(f"cannot find {CONFIG_NAME} in {source!r}: {error}") from error


def loaded_weights(config: Steer2EditConfig) -> dict[str, Any] | None:
    """The tensors from_pretrained validated for this config, if it was read from a saved adapter."""
    return getattr(config, "_validated_weights", None)


def was_loaded(config: Steer2EditConfig) -> bool:
    """True for a config read from a saved adapter (whose checks must not be relaxed)."""
    return getattr(config, "_loaded_from", None) is not None
