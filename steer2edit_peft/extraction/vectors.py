"""SteeringVectors: per-module response means of positives and negatives, and the steering directions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..core.errors import Steer2EditError
from ..version import __version__

VECTORS_FILE = "steering_vectors.safetensors"
METADATA_FILE = "steering_vectors.json"
STATISTICS = ("post_pos", "post_neg", "pre_pos", "pre_neg", "pre_ref", "routed_tokens")
# Per attention module, the second moment E[x x^T] of its whole input on the reference data [in, in] (a joint key
# over several heads needs the blocks between them): at the positions the inputs are read ("decision": its
# prompts) and along its answers (the later positions). in^2 floats each: 1.3 MB at 576, 64 MiB at 4096.
MOMENTS = ("ref_decision_moment", "ref_answer_moment")


@dataclass
class SteeringVectors:
    """Mean module outputs ("post") and inputs ("pre") over response tokens, per class, per module.

    The steering vector of a module is ``post_pos - post_neg``; the solver scores components with the
    average input ``(pre_pos + pre_neg) / 2``. ``pre_ref`` (optional) is the mean input on reference data the
    edit should leave alone; ``ref_decision_moment`` and ``ref_answer_moment`` (attention modules, optional) are
    its second moments, which selective keys need. All tensors are float32 on the CPU.
    """

    post_pos: dict[str, torch.Tensor]
    post_neg: dict[str, torch.Tensor]
    pre_pos: dict[str, torch.Tensor] = field(default_factory=dict)
    pre_neg: dict[str, torch.Tensor] = field(default_factory=dict)
    pre_ref: dict[str, torch.Tensor] = field(default_factory=dict)
    # Per fused-experts module: how many probe tokens (at the input positions) each expert was routed, [experts];
    # its "pre" means are per expert over those tokens alone.
    routed_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_decision_moment: dict[str, torch.Tensor] = field(default_factory=dict)
    ref_answer_moment: dict[str, torch.Tensor] = field(default_factory=dict)
    model_name: str | None = None
    model_signature: dict[str, Any] = field(default_factory=dict)
    token_counts: dict[str, int] = field(default_factory=dict)
    example_counts: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.post_pos) != set(self.post_neg):
            raise Steer2EditError("post_pos and post_neg must name the same modules")
        for statistic in STATISTICS:
            for module, tensor in getattr(self, statistic).items():
                if tensor.ndim != 1:
                    raise Steer2EditError(f"{module}: {statistic} must be a vector, got shape {tuple(tensor.shape)}")
                if not torch.isfinite(tensor).all():
                    raise Steer2EditError(f"{module}: {statistic} holds NaN or inf")
        for statistic in MOMENTS:
            for module, tensor in getattr(self, statistic).items():
                if tensor.ndim != 2 or tensor.shape[0] != tensor.shape[1]:
                    raise Steer2EditError(
                        f"{module}: {statistic} must be a square [in, in] matrix, got shape {tuple(tensor.shape)}"
                        + (
                            "; per-head moments are an earlier version's: extract the vectors again"
                            if tensor.ndim == 3
                            else ""
                        )
                    )
                if not torch.isfinite(tensor).all():
                    raise Steer2EditError(f"{module}: {statistic} holds NaN or inf")

    @property
    def modules(self) -> list[str]:
        return list(self.post_pos)

    @property
    def behaviour(self) -> str | None:
        """The behaviour the vectors were probed for, where extraction recorded one (``options["behaviour"]``); it
        picks the edit's default keys."""
        value = self.options.get("behaviour")
        return value if isinstance(value, str) else None

    def direction(self, module: str) -> torch.Tensor:
        """v = mean_post(positive) - mean_post(negative)."""
        return self.post_pos[module] - self.post_neg[module]

    @property
    def directions(self) -> dict[str, torch.Tensor]:
        return {module: self.direction(module) for module in self.modules}

    def has_pre_means(self, module: str) -> bool:
        return module in self.pre_pos and module in self.pre_neg

    def pre_mean(self, module: str) -> torch.Tensor:
        """x = (mean_pre(positive) + mean_pre(negative)) / 2, the input the solver scores components with."""
        if not self.has_pre_means(module):
            raise Steer2EditError(
                f"{module}: these steering vectors carry no input ('pre') means, which the solver needs; "
                "extract them with extract_steering_vectors or pass pre_means to from_directions"
            )
        return 0.5 * (self.pre_pos[module] + self.pre_neg[module])

    def reference_mean(self, module: str) -> torch.Tensor:
        """The mean input on the reference data (benign prompts the edit should leave alone)."""
        if module not in self.pre_ref:
            raise Steer2EditError(
                f"{module}: these steering vectors carry no reference inputs; extract them with "
                "extract_steering_vectors(..., reference=(benign_prompts, their_responses))"
            )
        return self.pre_ref[module]

    def reference_moments(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """E[x x^T] [in, in] of the reference inputs at its prompts' decision token and along its answers."""
        if module not in self.ref_decision_moment or module not in self.ref_answer_moment:
            raise Steer2EditError(
                f"{module}: these steering vectors carry no second moments of the reference inputs, which selective "
                "keys need; extract them again with extract_steering_vectors(..., reference=...) (steer2edit extract)"
            )
        return self.ref_decision_moment[module], self.ref_answer_moment[module]

    @classmethod
    def from_directions(
        cls,
        directions: dict[str, torch.Tensor],
        pre_means: dict[str, torch.Tensor] | None = None,
        model_name: str | None = None,
    ) -> SteeringVectors:
        """Vectors brought from elsewhere: one direction (and optionally one mean input) per module."""
        post_pos = {m: v.detach().float().cpu().reshape(-1) for m, v in directions.items()}
        post_neg = {m: torch.zeros_like(v) for m, v in post_pos.items()}
        pre = {m: x.detach().float().cpu().reshape(-1) for m, x in (pre_means or {}).items()}
        return cls(post_pos, post_neg, pre, dict(pre), model_name=model_name, options={"source": "from_directions"})

    def cosine_similarity(self, other: SteeringVectors) -> dict[str, float]:
        """Per shared module, the cosine similarity of the two steering directions."""
        shared = [m for m in self.modules if m in other.post_pos]
        if not shared:
            raise Steer2EditError("the two sets of steering vectors share no module")
        return {
            m: float(torch.nn.functional.cosine_similarity(self.direction(m), other.direction(m), dim=0))
            for m in shared
        }

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the vectors (safetensors + JSON) into ``directory``, each file whole (core/files.py); a folder that
        already holds files of those names is refused unless ``overwrite``."""
        from ..core.files import refuse_existing, staged

        directory = Path(directory)
        tensors = {
            f"{module}::{statistic}": tensor.contiguous()
            for statistic in STATISTICS + MOMENTS
            for module, tensor in getattr(self, statistic).items()
        }
        metadata = {
            "library_version": __version__,
            "model_name": self.model_name,
            "model_signature": self.model_signature,
            "modules": self.modules,
            "token_counts": self.token_counts,
            "example_counts": self.example_counts,
            "options": self.options,
        }
        refuse_existing(directory, (VECTORS_FILE, METADATA_FILE), overwrite)
        with staged(directory, overwrite) as staging:
            save_file(tensors, staging / VECTORS_FILE)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SteeringVectors:
        directory = Path(directory)
        for name in (VECTORS_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise Steer2EditError(f"{directory} holds no {name}; not a saved SteeringVectors folder")
        try:
            tensors = load_file(directory / VECTORS_FILE)
        except Exception as error:
            raise Steer2EditError(f"{directory / VECTORS_FILE} is truncated or corrupt: {error}") from error
        try:
            metadata = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Steer2EditError(f"{directory / METADATA_FILE} is not valid JSON: {error}") from error
        if not isinstance(metadata, dict):
            raise Steer2EditError(f"{directory / METADATA_FILE} holds a JSON {type(metadata).__name__}, not an object")
        for key, kind in (("modules", list), ("model_signature", dict), ("token_counts", dict), ("options", dict)):
            if key in metadata and not isinstance(metadata[key], kind):
                raise Steer2EditError(f"{directory / METADATA_FILE}: {key!r} must be a JSON {kind.__name__}")
        statistics: dict[str, dict[str, torch.Tensor]] = {s: {} for s in STATISTICS + MOMENTS}
        for key, tensor in tensors.items():
            module, _, statistic = key.rpartition("::")
            if statistic not in statistics:
                raise Steer2EditError(f"{directory / VECTORS_FILE}: unexpected tensor {key!r}")
            statistics[statistic][module] = tensor.float()
        order = {module: i for i, module in enumerate(metadata.get("modules", []))}
        ordered = {
            s: dict(sorted(d.items(), key=lambda kv: order.get(kv[0], len(order)))) for s, d in statistics.items()
        }
        try:
            return cls(
                **ordered,
                model_name=metadata.get("model_name"),
                model_signature=metadata.get("model_signature", {}),
                token_counts=metadata.get("token_counts", {}),
                example_counts=metadata.get("example_counts", {}),
                options=metadata.get("options", {}),
            )
        except Steer2EditError as error:
            raise Steer2EditError(f"{directory / VECTORS_FILE}: {error}") from error
