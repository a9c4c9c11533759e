"""The evaluation prompt sets: held out from every probe, each a list of prompts of one kind.

Shipped in data/ (written by the project): ``refusal.json`` (harmful and plainly benign requests),
``borderline.json`` (safe requests that sound risky), ``concise.json`` (questions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ..core.errors import DataError
from ..probes.datasets import names_in, read_prompts


def _shipped(name: str) -> Path:
    return Path(str(files("steer2edit_peft.evaluation").joinpath("data", f"{name}.json")))


def builtin_heldout(name: str) -> dict[str, list[str]]:
    """Held-out evaluation prompts shipped with steer2edit-peft, kept apart from the probe prompts.

    ``"refusal"`` has ``harmful`` and ``benign`` lists; ``"concise"`` has ``questions``; ``"borderline"`` has
    ``prompts``.
    """
    path = _shipped(name)
    if not path.is_file():
        raise DataError(f"no built-in held-out prompt set {name!r}; available: {names_in(path.parent, '.json')}")
    content = json.loads(path.read_text(encoding="utf-8"))
    return {key: list(value) for key, value in content.items() if isinstance(value, list)}


def borderline_prompts() -> list[str]:
    """Safe requests that sound risky ("How do I kill a Python process?"): refusing them is over-refusal.

    The report half, of kinds no edit is tuned on; the tuning half is the built-in prompt set ``borderline``."""
    return read_prompts(_shipped("borderline"))


HARMBENCH_PARTS = ("tune", "report")


def harmbench_behaviours(path: str | Path, part: str, kinds: tuple[str, ...] = ("standard", "contextual")) -> list[str]:
    """HarmBench behaviours (its ``harmbench_behaviors_text_all.csv``) of one part of a fixed split: ``"tune"`` for
    probing and tuning, ``"report"`` for figures only. A behaviour's part is the parity of the first byte of the
    SHA-256 of its BehaviorID, so the split needs no seed and does not move when rows are added. A contextual
    behaviour is its context, a blank line, then the request."""
    import csv
    import hashlib

    if part not in HARMBENCH_PARTS:
        raise ValueError(f"part must be one of {HARMBENCH_PARTS}, got {part!r}")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DataError(f"cannot read HarmBench behaviours from {path}: {error}") from error
    if rows and not {"Behavior", "FunctionalCategory", "BehaviorID"} <= set(rows[0]):
        raise DataError(f"{path}: not a HarmBench behaviours CSV (needs Behavior, FunctionalCategory, BehaviorID)")
    chosen = []
    for row in rows:
        in_report = hashlib.sha256(row["BehaviorID"].encode()).digest()[0] % 2 == 1
        if row["FunctionalCategory"] in kinds and in_report == (part == "report"):
            context = (row.get("ContextString") or "").strip()
            chosen.append(f"{context}\n\n{row['Behavior']}" if context else row["Behavior"])
    return chosen


@dataclass
class EvaluationPrompts:
    """What every condition is evaluated on.

    ``attribute``: prompts whose answers show the behaviour (harmful requests, questions to answer briefly).
    ``benign``: ordinary requests, for over-refusal and for the KL divergence from the reference model.
    ``borderline``: safe requests that use words of harm ("kill a process"), for exaggerated refusal (may be empty).
    ``texts``: plain benign text for perplexity (may be empty).
    """

    attribute: list[str]
    benign: list[str]
    borderline: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.attribute or not self.benign:
            raise ValueError("evaluation needs at least one attribute prompt and one benign prompt")

    def describe(self) -> str:
        parts = [f"{len(self.attribute)} attribute", f"{len(self.benign)} benign"]
        return " + ".join(parts + ([f"{len(self.borderline)} borderline"] if self.borderline else []))


def _spread(prompts: list[str], count: int) -> list[str]:
    """``count`` prompts taken evenly through the list, so every kind of a set grouped by kind is asked."""
    return prompts[:: max(1, len(prompts) // count)][:count]


def evaluation_prompts(behaviour: str, num_eval: int) -> EvaluationPrompts:
    """Held-out prompts for a built-in behaviour (never probed); benign and borderline ones for over-refusal."""
    refusal = builtin_heldout("refusal")
    attribute = refusal["harmful"] if behaviour == "refusal" else builtin_heldout(behaviour)["questions"]
    return EvaluationPrompts(
        attribute=attribute[:num_eval],
        benign=refusal["benign"][:num_eval],
        borderline=_spread(borderline_prompts(), num_eval) if behaviour == "refusal" else [],
    )
