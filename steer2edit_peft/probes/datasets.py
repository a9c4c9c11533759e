"""ContrastiveDataset: wanted (positive) and unwanted (negative) responses to prompts, and their tokenisation."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core.files import read_jsonl

_POSITIVE_LABELS = {"1", "positive", "pos", "true", "wanted"}
_NEGATIVE_LABELS = {"0", "negative", "neg", "false", "unwanted"}


@dataclass(frozen=True)
class ContrastiveExample:
    prompt: str
    response: str
    positive: bool


def _label(value: Any, where: str) -> bool:
    text = str(value).strip().lower()
    if text in _POSITIVE_LABELS:
        return True
    if text in _NEGATIVE_LABELS:
        return False
    raise DataError(f"{where}: label {value!r} is neither positive (1/'positive') nor negative (0/'negative')")


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


class ContrastiveDataset(Sequence[ContrastiveExample]):
    """Positive (wanted) and negative (unwanted) examples, each a prompt plus a response.

    Records are either ``{"prompt", "response", "label"}`` (label 1/0 or "positive"/"negative") or paired
    ``{"prompt", "positive", "negative"}``, which yields one example of each class.
    """

    def __init__(self, examples: Iterable[ContrastiveExample], description: str = "") -> None:
        self.examples = list(examples)
        self.description = description
        if not self.examples:
            raise DataError("the contrastive dataset is empty")
        missing = [
            name
            for name, flag in (("positive", True), ("negative", False))
            if not any(e.positive == flag for e in self.examples)
        ]
        if missing:
            raise DataError(f"the contrastive dataset has no {missing[0]} examples; both classes are needed")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index):  # type: ignore[override]
        return self.examples[index]

    def __repr__(self) -> str:
        return f"ContrastiveDataset({self.num_positive} positive, {self.num_negative} negative{', ' + self.description if self.description else ''})"

    @property
    def num_positive(self) -> int:
        return sum(e.positive for e in self.examples)

    @property
    def num_negative(self) -> int:
        return len(self.examples) - self.num_positive

    @property
    def positive_prompts(self) -> list[str]:
        """The prompts of the positive examples, each once: where the wanted behaviour applies."""
        return list(dict.fromkeys(example.prompt for example in self.examples if example.positive))

    @classmethod
    def from_lists(
        cls,
        positive_prompts: Sequence[str],
        positive_responses: Sequence[str],
        negative_prompts: Sequence[str],
        negative_responses: Sequence[str],
        description: str = "",
    ) -> ContrastiveDataset:
        """From parallel lists of prompts and responses for each class."""
        if len(positive_prompts) != len(positive_responses) or len(negative_prompts) != len(negative_responses):
            raise DataError("each class needs as many responses as prompts")
        records = [{"prompt": p, "response": r, "label": 1} for p, r in zip(positive_prompts, positive_responses)]
        records += [{"prompt": p, "response": r, "label": 0} for p, r in zip(negative_prompts, negative_responses)]
        return cls.from_records(records, description=description)

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]], description: str = "") -> ContrastiveDataset:
        examples = []
        for number, record in enumerate(records):
            where = f"record {number}"
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a mapping, got {type(record).__name__}")
            paired = "positive" in record or "negative" in record
            if not paired and not ("response" in record and "label" in record) or "prompt" not in record:
                raise DataError(
                    f"{where}: needs either 'prompt', 'response', 'label' or 'prompt', 'positive', 'negative'; "
                    f"got keys {sorted(record)}"
                )
            prompt = _text(record, "prompt", where)
            if paired:
                examples.append(ContrastiveExample(prompt, _text(record, "positive", where), True))
                examples.append(ContrastiveExample(prompt, _text(record, "negative", where), False))
            else:
                examples.append(
                    ContrastiveExample(prompt, _text(record, "response", where), _label(record["label"], where))
                )
        return cls(examples, description=description)

    @classmethod
    def from_file(cls, path: str | Path, description: str | None = None) -> ContrastiveDataset:
        """From a JSONL, JSON (list of records) or CSV file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"probe data file {path} does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".jsonl":
                provenance, records = read_jsonl_records(path)
                if provenance is not None and description is None:
                    description = (
                        f"{path.name}: {provenance.get('model')}'s own responses ({provenance.get('behaviour')})"
                    )
            elif suffix == ".json":
                records = json.loads(path.read_text(encoding="utf-8"))
            elif suffix == ".csv":
                with path.open(newline="", encoding="utf-8") as handle:
                    records = list(csv.DictReader(handle))
            else:
                raise DataError(f"{path}: unsupported probe data format {suffix!r} (use .jsonl, .json or .csv)")
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: malformed JSON ({error})") from error
        return cls.from_records(records, description=description if description is not None else path.name)

    @classmethod
    def from_hf(cls, dataset: Any, description: str = "") -> ContrastiveDataset:
        """From a ``datasets.Dataset`` (or any iterable of row dicts) with one of the record schemas."""
        name = description or getattr(getattr(dataset, "info", None), "dataset_name", None) or "datasets object"
        return cls.from_records((dict(row) for row in dataset), description=name)


PROBE_HEADER_KEY = "steer2edit_probe"  # the first line of a generated probe file: {"steer2edit_probe": provenance}


def read_jsonl_records(path: Path) -> tuple[dict[str, Any] | None, list[Any]]:
    """(provenance header or None, records) of a JSONL probe file."""
    records = read_jsonl(path)
    if records and isinstance(records[0], dict) and PROBE_HEADER_KEY in records[0]:
        header = records[0][PROBE_HEADER_KEY]
        return (header if isinstance(header, dict) else None), records[1:]
    return None, records


@dataclass
class UtilityData:
    """What an edit must leave alone: benign prompts and the base model's own answers to them.

    Calibration measures the KL from the base model on them; extraction can record their mean inputs.
    """

    prompts: list[str]
    responses: list[str]
    system_prompt: str | None = None
    dropped_empty: int = 0  # prompts left out because the model's own answer to them was empty

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) != len(self.responses):
            raise DataError("utility data needs at least one prompt and one response per prompt")


def shipped(*parts: str) -> Path:
    """A file or folder of the data shipped in ``steer2edit_peft/probes/data``."""
    from importlib.resources import files

    return Path(str(files("steer2edit_peft.probes").joinpath("data", *parts)))


def names_in(folder: Path, suffix: str) -> list[str]:
    """The names of the ``*suffix`` files in a shipped folder, for "available: ..." messages."""
    return sorted(p.name.removesuffix(suffix) for p in folder.iterdir() if p.name.endswith(suffix))


def builtin_prompts(name: str) -> list[str]:
    """A prompt set written by the project (``data/prompts/<name>.json``), e.g. ``"harmful"`` or ``"questions"``."""
    path = shipped("prompts", f"{name}.json")
    if not path.is_file():
        raise DataError(f"no built-in prompt set {name!r}; available: {names_in(path.parent, '.json')}")
    return read_prompts(path)


def read_prompts(path: Path) -> list[str]:
    """Prompts from a file: a .json list (or ``{"prompts": [...]}``), .jsonl of ``{"prompt": ...}`` or strings, or
    .txt with one prompt per line. A malformed entry is one DataError naming the file and the line or item."""
    if path.suffix == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".jsonl":
        prompts = [_prompt_of(row, f"{path}: line {number}") for number, row in _numbered_jsonl(path)]
    else:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error}); a .json prompt file holds a list of strings") from error
        if isinstance(content, dict) and "prompts" in content:
            content = content["prompts"]
        if not isinstance(content, list):
            raise DataError(f"{path}: expected a JSON list of prompts or {{'prompts': [...]}}")
        prompts = [_prompt_of(item, f"{path}: item {number}") for number, item in enumerate(content, start=1)]
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def _numbered_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {number} is not valid JSON ({error})") from error
    return rows


def _prompt_of(entry: Any, where: str) -> str:
    prompt = entry.get("prompt") if isinstance(entry, dict) else entry
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(entry, dict) and "prompt" not in entry:
        raise DataError(f"{where}: no 'prompt' key (keys: {sorted(entry)[:5]})")
    raise DataError(f"{where}: a prompt must be a non-empty string, got {str(prompt)[:60]!r}")


def load_prompts(spec: str) -> list[str]:
    """Prompts from a file (see read_prompts) or a built-in prompt set name."""
    path = Path(spec)
    if path.is_file():
        return read_prompts(path)
    if path.suffix or path.parent != Path("."):
        raise DataError(f"prompt file {spec} does not exist")
    return builtin_prompts(spec)


def builtin_probe(name: str) -> ContrastiveDataset:
    """A probe set shipped with steer2edit-peft (written by the project), e.g. ``"refusal"``."""
    path = shipped(f"{name}.jsonl")
    if not path.is_file():
        raise DataError(f"no built-in probe set {name!r}; available: {names_in(path.parent, '.jsonl')}")
    return ContrastiveDataset.from_records(read_jsonl(path), description=f"steer2edit-peft built-in probe set '{name}'")


def load_probe(spec: str, split: str = "train") -> ContrastiveDataset:
    """A probe set from a file path, a built-in name (``refusal``, ``concise``), or a `datasets` Hub name."""
    path = Path(spec)
    if path.is_file():
        return ContrastiveDataset.from_file(path)
    if path.suffix in (".jsonl", ".json", ".csv") or path.parent != Path("."):
        raise DataError(f"probe file {spec} does not exist")
    if shipped(f"{spec}.jsonl").is_file():
        return builtin_probe(spec)
    if "/" not in spec:
        available = names_in(shipped(), ".jsonl")
        raise DataError(f"{spec!r} is neither a file nor a built-in probe set ({available}) nor a Hub dataset name")
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"loading the Hub dataset {spec!r} needs `pip install datasets`") from error
    return ContrastiveDataset.from_hf(datasets.load_dataset(spec, split=split), description=f"{spec} ({split})")
