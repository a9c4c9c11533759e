"""What a saved Steer2Edit adapter_config.json may hold, and reading one so that nothing malformed gets through.

Every field has a rule (FIELD_RULES), applied to configs made in Python and read from files alike; a file must also
hold the keys save_pretrained writes and nothing else, with bounded numbers and plain module names where PEFT would
compile a regular expression.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import AdapterValidationError
from ..core.settings import KEY_DIRECTIONS, POSITIONS

CONFIG_NAME = "adapter_config.json"
MAX_STRENGTH = 1e3
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
DIFFERENT_SAVES = (
    "the config and the weights come from different saves (a save was interrupted or was running while they were "
    "read, or the files were altered or mixed by hand)"
)
MAX_INTEGER_DIGITS = 30
MAX_CONFIG_BYTES = 64 * 2**20
# PEFT turns some config fields into regular expressions (a string target_modules, layers_pattern): in a file, which
# may come from anyone, they must be plain dotted module names, so that no pattern can make matching hang.
MODULE_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
MAX_MODULE_NAME = 512
MAX_MODULE_NAMES = 100_000
NAME_FIELDS = ("target_modules", "attention_modules", "mlp_modules", "modules_to_save", "layers_pattern")


def require_regular_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        kind = "a dangling link" if os.path.islink(path) else "missing"
        raise AdapterValidationError(f"{path} is {kind}") from error
    if not stat.S_ISREG(mode):
        raise AdapterValidationError(f"{path} is not a regular file")


# ---------------------------------------------------------------- config fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _components_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must map module names to lists of terms"
    for module, terms in value.items():
        if not isinstance(module, str) or not isinstance(terms, list) or not terms:
            return f"module {module!r}: needs a non-empty list of terms, got {terms!r}"
        for term in terms:
            if not isinstance(term, list) or not all(_is_int(index) and index >= 0 for index in term):
                return f"module {module!r}: every term must be a list of non-negative integers, got {term!r}"
            if len(set(term)) != len(term):
                return f"module {module!r}: a term lists the same component twice: {term!r}"
    return None


# What the config records of a gate (solver/gates.py, Gate.record): key -> what it must be.
GATE_RECORD: dict[str, Any] = {
    "layer": lambda v: _is_int(v) and v >= 0,
    "neuron": lambda v: _is_int(v) and v >= 0,
    "gate_module": lambda v: isinstance(v, str) and bool(v),
    "up_module": lambda v: isinstance(v, str) and bool(v),
    "row_width": lambda v: _is_int(v) and v > 0,
    "amount": lambda v: _is_number(v) and v > 0,
    "probe_share": lambda v: _is_number(v) and 0 <= v <= 1,
    "reference_share": lambda v: _is_number(v) and 0 <= v <= 1,
}


def _gates_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not an object"
    for module, record in value.items():
        if not isinstance(module, str) or not isinstance(record, dict) or set(record) != set(GATE_RECORD):
            return f"{module!r}: needs exactly the keys {sorted(GATE_RECORD)}"
        bad = [key for key, check in GATE_RECORD.items() if not check(record[key])]
        if bad:
            return f"{module!r}: bad {', '.join(bad)}"
    return None


def _signature_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    bad = [key for key, item in value.items() if not (_is_int(item) and item > 0) and not isinstance(item, str)]
    return f"entries {bad} must be positive integers or strings" if bad else None


def _task_types() -> set[str]:
    from peft.utils import TaskType

    return {task.value for task in TaskType}


def _rule(description: str, check: Any) -> tuple[str, Any]:
    return description, check


# field -> (what it must be, predicate). Applied to every config, made by hand or read from a file.
FIELD_RULES: dict[str, tuple[str, Any]] = {
    "peft_type": _rule("'STEER2EDIT'", lambda v: v == "STEER2EDIT"),
    "task_type": _rule("null or a PEFT task type", lambda v: v is None or (isinstance(v, str) and v in _task_types())),
    "auto_mapping": _rule("null or an object", lambda v: v is None or isinstance(v, dict)),
    "peft_version": _rule("null or a string", lambda v: v is None or isinstance(v, str)),
    "base_model_name_or_path": _rule("null or a string", lambda v: v is None or isinstance(v, str)),
    "revision": _rule("null or a string", lambda v: v is None or isinstance(v, str)),
    "inference_mode": _rule("a boolean", lambda v: isinstance(v, bool)),
    "target_modules": _rule(
        "null, a string or a list of strings", lambda v: v is None or isinstance(v, str) or _is_str_list(v)
    ),
    "attention_modules": _rule("null or a list of strings", lambda v: v is None or _is_str_list(v)),
    "mlp_modules": _rule("null or a list of strings", lambda v: v is None or _is_str_list(v)),
    "modules_to_save": _rule("null or a list of strings", lambda v: v is None or _is_str_list(v)),
    "layers_to_transform": _rule(
        "null, a non-negative integer or a list of them",
        lambda v: (
            v is None or (_is_int(v) and v >= 0) or (isinstance(v, list) and all(_is_int(i) and i >= 0 for i in v))
        ),
    ),
    "layers_pattern": _rule(
        "null, a string or a list of strings", lambda v: v is None or isinstance(v, str) or _is_str_list(v)
    ),
    "head_dim": _rule("null or a positive integer", lambda v: v is None or (_is_int(v) and v > 0)),
    "fused_experts": _rule(
        "an object of module names to [experts, neurons per expert]",
        lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(k, str) and isinstance(i, list) and len(i) == 2 and all(_is_int(n) and n > 0 for n in i)
                for k, i in v.items()
            )
        ),
    ),
    "head_dims": _rule(
        "an object of module names to positive integers",
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_int(i) and i > 0 for k, i in v.items()),
    ),
    "rho_attn": _rule("null or a finite number", lambda v: v is None or _is_number(v)),
    "rho_mlp": _rule("null or a finite number", lambda v: v is None or _is_number(v)),
    "alpha": _rule("a finite number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1),
    "strength": _rule(
        f"a finite number of magnitude at most {MAX_STRENGTH:g}", lambda v: _is_number(v) and abs(v) <= MAX_STRENGTH
    ),
    "key_direction": _rule("'weight', 'contrast' or 'selective'", lambda v: v in KEY_DIRECTIONS),
    "positions": _rule(f"null or one of {POSITIONS}", lambda v: v is None or v in POSITIONS),
    "input_positions": _rule(f"null or one of {POSITIONS}", lambda v: v is None or v in POSITIONS),
    "fan_in_fan_out": _rule("a boolean", lambda v: isinstance(v, bool)),
    "init_weights": _rule("a boolean", lambda v: isinstance(v, bool)),
    "edited_components": _rule(
        "module -> list of terms -> component indices", lambda v: _components_problem(v) is None
    ),
    "gates": _rule(
        f"an object of module names to objects with {sorted(GATE_RECORD)}", lambda v: _gates_problem(v) is None
    ),
    "base_model_signature": _rule(
        "an object of positive integers and strings", lambda v: _signature_problem(v) is None
    ),
    "behaviour": _rule("null or a string", lambda v: v is None or isinstance(v, str)),
    "probe_data": _rule("null or a string", lambda v: v is None or isinstance(v, str)),
    "library_version": _rule("a string", lambda v: isinstance(v, str)),
    "format_version": _rule("an integer", _is_int),
    "tensor_digest": _rule(
        "null or 'sha256:' + 64 hex digits",
        lambda v: v is None or (isinstance(v, str) and bool(DIGEST_PATTERN.match(v))),
    ),
}
# A file written by save_pretrained always has these; without them a check would silently switch off.
REQUIRED_IN_FILES = ("peft_type", "format_version", "edited_components", "base_model_signature", "tensor_digest")


def field_problems(values: Mapping[str, Any]) -> list[str]:
    """One message per field whose value breaks its rule."""
    problems = []
    for name, (description, check) in FIELD_RULES.items():
        if name not in values:
            continue
        value = values[name]
        if not check(value):
            detail = {
                "edited_components": _components_problem,
                "base_model_signature": _signature_problem,
                "gates": _gates_problem,
            }.get(name)
            reason = detail(value) if detail else None
            problems.append(f"{name} must be {description}, got {value!r}" + (f" ({reason})" if reason else ""))
    return problems


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:  # Python refuses to convert huge ones, with a bare ValueError
        raise AdapterValidationError(f"an integer of {len(text.lstrip('-'))} digits; no adapter setting is that large")
    return int(text)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw JSON object of an adapter_config.json, or one AdapterValidationError naming the file."""
    path = Path(path)
    require_regular_file(path)
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise AdapterValidationError(f"{path}: {os.path.getsize(path)} bytes, too large to be an adapter config")
    try:
        content = json.loads(path.read_text(encoding="utf-8"), parse_int=_bounded_int)
    except AdapterValidationError as error:
        raise AdapterValidationError(f"{path}: {error}") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterValidationError(f"{path}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise AdapterValidationError(f"{path}: JSON nested too deeply to be an adapter config") from error
    if not isinstance(content, dict):
        raise AdapterValidationError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content


def _names_problem(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and name == "layers_pattern":
        value = [value]
    if not isinstance(value, list):
        return f"{name} must be a list of module names in a saved adapter (PEFT reads a string as a regular expression)"
    if len(value) > MAX_MODULE_NAMES:
        return f"{name} lists {len(value)} names, more than any model has modules"
    for item in value:
        if not isinstance(item, str) or len(item) > MAX_MODULE_NAME or not MODULE_NAME.fullmatch(item):
            return f"{name} must list plain dotted module names, got {str(item)[:80]!r}"
    return None


def check_saved_config(content: Mapping[str, Any], known_fields: set[str], where: str) -> None:
    """The checks only a file needs: required keys present, no key that nobody reads, module names that are names."""
    missing = [name for name in REQUIRED_IN_FILES if name not in content]
    if missing:
        raise AdapterValidationError(f"{where}: lacks {', '.join(missing)}; not a config written by save_pretrained")
    unknown = sorted(set(content) - known_fields)
    if unknown:
        raise AdapterValidationError(f"{where}: unknown key(s) {unknown}; this steer2edit-peft does not read them")
    problems = field_problems(content)
    problems += [p for p in (_names_problem(name, content.get(name)) for name in NAME_FIELDS) if p is not None]
    for name in ("head_dims", "fused_experts"):
        value = content.get(name)
        if isinstance(value, dict):
            problems += [p for p in [_names_problem(name, list(value))] if p is not None]
    if problems:
        raise AdapterValidationError(f"{where}: " + "; ".join(problems))


_NAMES_STEER2EDIT = re.compile(rb'"peft_type"\s*:\s*"STEER2EDIT"')
# Where an adapter lives, as PEFT and transformers take it: the keywords that choose the file to read.
HUB_ARGUMENTS = ("subfolder", "revision", "token", "cache_dir", "local_files_only", "force_download")


def declared_peft_type(path: Path) -> str | None:
    """The peft_type an adapter_config.json declares, or None where it declares none or is no JSON object; a file
    that names STEER2EDIT but is malformed is one AdapterValidationError (any other is PEFT's to report)."""
    try:
        content = read_config_file(path)
    except AdapterValidationError:
        if _names_steer2edit(path):
            raise
        return None
    peft_type = content.get("peft_type")
    return peft_type if isinstance(peft_type, str) else None


def _names_steer2edit(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            return bool(_NAMES_STEER2EDIT.search(handle.read(MAX_CONFIG_BYTES)))
    except OSError:
        return False


def saved_peft_type(source: str, kwargs: Mapping[str, Any]) -> str | None:
    """The peft_type an adapter folder or Hub repo declares (``kwargs``: subfolder, revision, ...), or None when
    there is none to read here."""
    folder = Path(source) / kwargs["subfolder"] if kwargs.get("subfolder") else Path(source)
    if folder.is_dir():
        path = folder / CONFIG_NAME
    else:
        from huggingface_hub import hf_hub_download

        hub_kwargs = {key: kwargs[key] for key in HUB_ARGUMENTS if kwargs.get(key) is not None}
        try:
            path = Path(hf_hub_download(source, CONFIG_NAME, **hub_kwargs))
        except Exception:
            return None  # not ours to judge: PEFT or transformers reports it
    return declared_peft_type(path)
