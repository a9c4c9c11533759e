"""ContrastiveDataset: wanted (positive) and unwanted (negative) responses to prompts, and their tokenisation."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import Steer2EditError

_POSITIVE_LABELS = {"1", "positive", "pos", "true", "wanted"}
_NEGATIVE_LABELS = {"0", "negative", "neg", "false", "unwanted"}


class DataError(Steer2EditError):
    """Probe data is empty, one-sided or malformed."""


@dataclass(frozen=True)
class ContrastiveExample:
    prompt: str
    response: str
    positive: bool


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response, and where the response starts."""

    input_ids: list[int]
    response_start: int


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
    def from_model(
        cls, model: Any, tokenizer: Any, prompts: Sequence[str], behaviour: Any = "refusal", **options: Any
    ) -> ContrastiveDataset:
        """From the model's own sampled responses, with and without a behaviour (see probes.generate_probe)."""
        from .probes.generate import generate_probe

        return generate_probe(model, tokenizer, prompts, behaviour, **options)

    @classmethod
    def from_hf(cls, dataset: Any, description: str = "") -> ContrastiveDataset:
        """From a ``datasets.Dataset`` (or any iterable of row dicts) with one of the record schemas."""
        name = description or getattr(getattr(dataset, "info", None), "dataset_name", None) or "datasets object"
        return cls.from_records((dict(row) for row in dataset), description=name)


PROBE_HEADER_KEY = "steer2edit_probe"  # the first line of a generated probe file: {"steer2edit_probe": provenance}


def read_jsonl_records(path: Path) -> tuple[dict[str, Any] | None, list[Any]]:
    """(provenance header or None, records) of a JSONL probe file."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        records = [json.loads(line) for line in lines]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON line ({error})") from error
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


def pad_token_id(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def encode_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Prompt token ids: through the chat template (with generation prompt) when there is one."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(encoded, dict) or hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        return list(encoded)
    text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
    return list(tokenizer(text).input_ids)


def encode_example(
    tokenizer: Any, example: ContrastiveExample, system_prompt: str | None = None, where: str = "example"
) -> EncodedExample:
    """Prompt and response tokenised apart, so the response tokens are known exactly."""
    prompt_ids = encode_prompt(tokenizer, example.prompt, system_prompt)
    response_ids = list(tokenizer(example.response, add_special_tokens=False).input_ids)
    if not response_ids:
        raise DataError(f"{where}: the response {example.response!r} tokenises to nothing")
    return EncodedExample(prompt_ids + response_ids, len(prompt_ids))


def collate(
    batch: list[EncodedExample], pad_id: int, padding_side: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, position_ids and response_mask [batch, length], padded on one side."""
    length = max(len(item.input_ids) for item in batch)
    shape = (len(batch), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    response_mask = torch.zeros(shape, dtype=torch.bool)
    for row, item in enumerate(batch):
        size = len(item.input_ids)
        start = length - size if padding_side == "left" else 0
        input_ids[row, start : start + size] = torch.tensor(item.input_ids)
        attention_mask[row, start : start + size] = 1
        response_mask[row, start + item.response_start : start + size] = True
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids, response_mask


def _builtin_names(folder: Any, suffix: str) -> list[str]:
    return sorted(p.name.removesuffix(suffix) for p in folder.iterdir() if p.name.endswith(suffix))


def builtin_heldout(name: str) -> dict[str, list[str]]:
    """Held-out evaluation prompts shipped with steer2edit-peft, kept apart from the probe prompts.

    ``"refusal"`` has ``harmful`` and ``benign`` lists; ``"concise"`` has ``questions``.
    """
    from importlib.resources import files

    folder = files("steer2edit_peft") / "probes" / "heldout"
    path = folder / f"{name}.json"
    if not path.is_file():
        raise DataError(f"no built-in held-out prompt set {name!r}; available: {_builtin_names(folder, '.json')}")
    content = json.loads(path.read_text(encoding="utf-8"))
    return {key: list(value) for key, value in content.items() if isinstance(value, list)}


def builtin_probe(name: str) -> ContrastiveDataset:
    """A probe set shipped with steer2edit-peft (written by the project), e.g. ``"refusal"``."""
    from importlib.resources import files

    probe = files("steer2edit_peft") / "probes" / f"{name}.jsonl"
    if not probe.is_file():
        available = _builtin_names(files("steer2edit_peft") / "probes", ".jsonl")
        raise DataError(f"no built-in probe set {name!r}; available: {available}")
    records = [json.loads(line) for line in probe.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ContrastiveDataset.from_records(records, description=f"steer2edit-peft built-in probe set '{name}'")


def load_probe(spec: str, split: str = "train") -> ContrastiveDataset:
    """A probe set from a file path, a built-in name (``refusal``, ``concise``), or a `datasets` Hub name."""
    path = Path(spec)
    if path.is_file():
        return ContrastiveDataset.from_file(path)
    if path.suffix in (".jsonl", ".json", ".csv") or path.parent != Path("."):
        raise DataError(f"probe file {spec} does not exist")
    from importlib.resources import files

    if (files("steer2edit_peft") / "probes" / f"{spec}.jsonl").is_file():
        return builtin_probe(spec)
    if "/" not in spec:
        available = _builtin_names(files("steer2edit_peft") / "probes", ".jsonl")
        raise DataError(f"{spec!r} is neither a file nor a built-in probe set ({available}) nor a Hub dataset name")
    try:
        import datasets
    except ImportError as error:
        raise DataError(f"loading the Hub dataset {spec!r} needs `pip install datasets`") from error
    return ContrastiveDataset.from_hf(datasets.load_dataset(spec, split=split), description=f"{spec} ({split})")
