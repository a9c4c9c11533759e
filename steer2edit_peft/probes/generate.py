"""Probe data from the model's own sampled responses: the same prompts answered with and without the behaviour.

For every prompt, ``num_samples`` responses are sampled under the behaviour's system prompt (wanted, positive)
and ``num_samples`` without it (unwanted, negative). With ``confirm`` only responses the behaviour's judges accept
are kept, and the prompt is held fixed: a prompt contributes as many positives as negatives (the smaller count of
its confirmed ones), so the two classes differ in their responses only. The result can be cached as JSONL, whose
first line records how it was made; a later call with the same request reads the file instead of sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.architectures import decoder_model, model_signature
from ..core.errors import DataError
from ..core.generation import Sampling, sample_responses
from ..core.settings import DEFAULTS
from .behaviours import Behaviour, get_behaviour
from .datasets import (
    PROBE_HEADER_KEY,
    ContrastiveDataset,
    UtilityData,
    builtin_prompts,
    load_prompts,
    read_jsonl_records,
    shipped,
)

PROBE_FORMAT = 1
PROBE_SAMPLING = Sampling(temperature=0.8, top_p=0.95)  # frozen dataclass: safe as a default

logger = logging.getLogger("steer2edit_peft")


def _provenance(
    model: Any,
    prompts: Sequence[str],
    behaviour: Behaviour,
    num_samples: int,
    sampling: Sampling,
    max_new_tokens: int,
    confirm: bool,
) -> dict[str, Any]:
    config = getattr(decoder_model(model), "config", None)
    return {
        "format": PROBE_FORMAT,
        "model": getattr(config, "_name_or_path", None) or None,
        "model_signature": model_signature(config) if config is not None else {},
        "behaviour": behaviour.name,
        "positive_system_prompt": behaviour.positive_system_prompt,
        "negative_system_prompt": behaviour.negative_system_prompt,
        "positive_prefix": behaviour.positive_prefix,
        "prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
        "num_samples": num_samples,
        "sampling": asdict(sampling),
        "max_new_tokens": max_new_tokens,
        "confirm": confirm,
    }


def read_if_current(path: Path, provenance: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The records of a generated file if its header records ``provenance`` (counts aside), else None."""
    if not path.is_file():
        return None
    recorded, records = read_jsonl_records(path)
    if recorded is None or {k: v for k, v in recorded.items() if k != "counts"} != provenance:
        return None
    return records


def write_probe(path: Path, provenance: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write a probe JSONL file in one step (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({PROBE_HEADER_KEY: provenance}, ensure_ascii=False)]
    lines += [json.dumps(record, ensure_ascii=False) for record in records]
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write("\n".join(lines) + "\n")
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def paired_records(
    prompts: Sequence[str],
    positives: Sequence[Sequence[str]],
    negatives: Sequence[Sequence[str]],
    behaviour: Behaviour,
    confirm: bool,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Contrastive records holding each prompt fixed, and counts of what was sampled and kept."""
    records: list[dict[str, Any]] = []
    counts = {"sampled_positive": 0, "confirmed_positive": 0, "sampled_negative": 0, "confirmed_negative": 0}
    for prompt, wanted, unwanted in zip(prompts, positives, negatives):
        counts["sampled_positive"] += len(wanted)
        counts["sampled_negative"] += len(unwanted)
        if confirm:
            wanted = [r for r in wanted if r.strip() and (behaviour.confirm_positive or _nonempty)(prompt, r)]
            unwanted = [r for r in unwanted if r.strip() and (behaviour.confirm_negative or _nonempty)(prompt, r)]
        counts["confirmed_positive"] += len(wanted)
        counts["confirmed_negative"] += len(unwanted)
        kept = min(len(wanted), len(unwanted))
        records += [{"prompt": prompt, "response": r, "label": "positive"} for r in wanted[:kept]]
        records += [{"prompt": prompt, "response": r, "label": "negative"} for r in unwanted[:kept]]
    return records, counts


def _nonempty(prompt: str, response: str) -> bool:
    return bool(response.strip())


def _checked_prompts(prompts: Sequence[str]) -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise DataError("probe generation needs at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise DataError(f"probe prompts must be non-empty strings, got {bad[0]!r}")
    return prompts


def generate_probe(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    behaviour: str | Behaviour = "refusal",
    *,
    num_samples: int | None = None,
    sampling: Sampling = PROBE_SAMPLING,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    confirm: bool = True,
    cache: str | os.PathLike[str] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
    show_progress: bool = True,
) -> ContrastiveDataset:
    """A ContrastiveDataset of the model's own responses to ``prompts``, with and without ``behaviour``.

    ``behaviour``: a built-in name ("refusal", "concise", "truthful") or a :class:`Behaviour`, e.g.
    ``Behaviour.from_system_prompt("Always answer in French.")``. ``cache``: a .jsonl path read when it records
    the same request, else written. ``reuse``: more files to read that way (never written), e.g. shipped ones.
    ``num_samples``: responses per prompt and class (default: the behaviour's ``samples_per_prompt``).
    """
    prompts = _checked_prompts(prompts)
    behaviour = get_behaviour(behaviour) if isinstance(behaviour, str) else behaviour
    num_samples = behaviour.samples_per_prompt if num_samples is None else num_samples
    provenance = _provenance(model, prompts, behaviour, num_samples, sampling, max_new_tokens, confirm)
    cache_path = Path(cache) if cache is not None else None
    for candidate in [*map(Path, reuse), *([cache_path] if cache_path is not None else [])]:
        records = read_if_current(candidate, provenance)
        if records is not None:
            return ContrastiveDataset.from_records(records, description=_description(provenance, candidate))
    common: dict[str, Any] = dict(num_samples=num_samples, sampling=sampling, max_new_tokens=max_new_tokens)
    common.update(batch_size=batch_size, show_progress=show_progress)
    positives = sample_responses(
        model,
        tokenizer,
        prompts,
        system_prompt=behaviour.positive_system_prompt,
        response_prefix=behaviour.positive_prefix,
        **common,
    )
    negatives = sample_responses(model, tokenizer, prompts, system_prompt=behaviour.negative_system_prompt, **common)
    records, counts = paired_records(prompts, positives, negatives, behaviour, confirm)
    if counts["confirmed_positive"] == 0:
        raise DataError(
            f"the {behaviour.name} system prompt changed nothing: none of the {counts['sampled_positive']} responses "
            "sampled under it was confirmed as showing the behaviour. Use another system prompt, more samples, a "
            "response prefix, or confirm=False"
        )
    if not records:
        raise DataError(
            f"no prompt has both a confirmed wanted and a confirmed unwanted response ({counts}); the model shows "
            f"the {behaviour.name} behaviour with and without the system prompt alike"
        )
    provenance["counts"] = counts
    if cache_path is not None:
        write_probe(cache_path, provenance, records)
    return ContrastiveDataset.from_records(records, description=_description(provenance, cache_path))


def _description(provenance: dict[str, Any], path: Path | None) -> str:
    where = f" ({path.name})" if path is not None else ""
    return (
        f"{provenance.get('model')}'s own responses to {provenance.get('prompts')} prompts, {provenance.get('behaviour')} "
        f"vs not{where}"
    )


def generate_utility_data(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    system_prompt: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
    show_progress: bool = False,
) -> UtilityData:
    """The model's own greedy answers to benign ``prompts`` (call before any edit is active), cached like probes."""
    from ..core.generation import generate_responses

    prompts = list(prompts)
    if not prompts:
        raise DataError("utility data needs at least one prompt")
    config = getattr(decoder_model(model), "config", None)
    provenance = {
        "format": PROBE_FORMAT,
        "model": getattr(config, "_name_or_path", None) or None,
        "model_signature": model_signature(config) if config is not None else {},
        "behaviour": "utility",
        "system_prompt": system_prompt,
        "prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
    }
    cache_path = Path(cache) if cache is not None else None
    for candidate in [*map(Path, reuse), *([cache_path] if cache_path is not None else [])]:
        records = read_if_current(candidate, provenance)
        if records is not None:
            return answered_only([r["prompt"] for r in records], [r["response"] for r in records], system_prompt)
    responses = generate_responses(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        show_progress=show_progress,
    )
    if cache_path is not None:
        write_probe(cache_path, provenance, [{"prompt": p, "response": r} for p, r in zip(prompts, responses)])
    return answered_only(prompts, responses, system_prompt)


def answered_only(prompts: list[str], responses: list[str], system_prompt: str | None) -> UtilityData:
    """Utility data without the prompts the model answered with nothing (an answer must have tokens to measure)."""
    kept = [(prompt, response) for prompt, response in zip(prompts, responses) if response.strip()]
    if not kept:
        raise DataError(
            f"the model's own greedy answers to all {len(prompts)} benign prompts are empty, so there is nothing to "
            "measure an edit against: check its chat template and end-of-sequence token"
        )
    dropped = len(prompts) - len(kept)
    if dropped:
        logger.warning(
            "steer2edit: left out %d of %d benign prompts whose own answer from the model is empty",
            dropped,
            len(prompts),
        )
    return UtilityData([p for p, _ in kept], [r for _, r in kept], system_prompt, dropped_empty=dropped)


def shipped_file(model: Any, name: str) -> Path | None:
    """A file of generated data shipped for this model (probes/data/generated/<model>/<name>.jsonl), if there is one."""
    config = getattr(decoder_model(model), "config", None)
    model_name = (getattr(config, "_name_or_path", None) or "").rstrip("/").split("/")[-1].lower()
    if not model_name:
        return None
    path = shipped("generated", model_name, f"{name}.jsonl")
    return path if path.is_file() else None


def builtin_probe_data(
    model: Any,
    tokenizer: Any,
    behaviour: str,
    *,
    batch_size: int = 16,
    cache: Path | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> ContrastiveDataset:
    """The model's own responses to a built-in behaviour's prompts: the shipped file when it is this model's, else
    sampled (and cached at ``cache``)."""
    spec = get_behaviour(behaviour)
    assert spec.prompt_set is not None
    shipped = shipped_file(model, behaviour)
    return generate_probe(
        model,
        tokenizer,
        builtin_prompts(spec.prompt_set),
        spec,
        batch_size=batch_size,
        cache=cache,
        reuse=([shipped] if shipped else []) + list(reuse),
    )


def builtin_utility_data(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    cache: Path | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> UtilityData:
    """The model's own answers to the built-in benign prompts (or to ``prompts``): the shipped file when it is this
    model's and these prompts', else generated (and cached at ``cache``)."""
    shipped = shipped_file(model, "utility")
    return generate_utility_data(
        model,
        tokenizer,
        builtin_prompts("benign") if prompts is None else prompts,
        batch_size=batch_size,
        cache=cache,
        reuse=([shipped] if shipped else []) + list(reuse),
    )


def reference_data(
    model: Any,
    tokenizer: Any,
    sets: Sequence[str] = DEFAULTS.reference,
    *,
    batch_size: int = 16,
    cache: Path | None = None,
    reuse: Path | None = None,
) -> UtilityData:
    """The model's own answers to every prompt set in ``sets`` (built-in names such as ``benign`` and
    ``borderline``, or files of prompts), as one UtilityData: what an edit must leave alone.

    A built-in set's answers are read from the shipped file when it is this model's; ``cache``: a folder where each
    set's answers are written as ``reference-<set>.jsonl`` (and read when current); ``reuse``: such a folder of an
    earlier run, read only."""
    if not sets:
        raise DataError("the reference needs at least one prompt set")
    prompts: list[str] = []
    responses: list[str] = []
    dropped = 0
    for spec in sets:
        builtin = not Path(spec).suffix and Path(spec).parent == Path(".")
        shipped = shipped_file(model, "utility" if spec == "benign" else spec) if builtin else None
        name = f"reference-{Path(spec).stem}.jsonl"
        part = generate_utility_data(
            model,
            tokenizer,
            load_prompts(spec),
            batch_size=batch_size,
            cache=cache / name if cache is not None else None,
            reuse=[p for p in (shipped, reuse / name if reuse is not None else None) if p is not None],
        )
        prompts += part.prompts
        responses += part.responses
        dropped += part.dropped_empty
    return UtilityData(prompts, responses, dropped_empty=dropped)
