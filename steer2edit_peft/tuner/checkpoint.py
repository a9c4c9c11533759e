"""What a saved Steer2Edit adapter must look like, and reading one so that nothing malformed gets through.

Every check here runs before the model is touched. A saved adapter is ``adapter_config.json`` plus
``adapter_model.safetensors``; the config records a digest of the tensors, so a config and weights that come from
two different saves (a concurrent save, files copied by hand) are refused instead of loaded as a silent mix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import AdapterValidationError
from ..core.settings import KEY_DIRECTIONS, POSITIONS

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin")
FLOAT_TENSORS = ("steer2edit_u", "steer2edit_k", "steer2edit_lambda")
INDEX_TENSORS = ("steer2edit_indices", "steer2edit_term")
TENSOR_NAMES = FLOAT_TENSORS + INDEX_TENSORS
# The dtypes whose values every check (finiteness, magnitude) and every later use (matmul, merge) supports.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_DTYPE_NAMES = "float16, bfloat16, float32 or float64"
PEFT_PREFIX = "base_model.model."
# |strength * lambda_c| * |u_term(c)| * |k_c|: how far one component moves its weight columns. Trained weights
# have column norms of order 1, so 1e4 already overwhelms any of them; larger values only come from a mistake
# (rho near 0, a corrupted file) and would turn the model's outputs into noise or NaN.
MAX_EDIT_MAGNITUDE = 1e4
MAX_STRENGTH = 1e3
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
CONVERT_PICKLE_HINT = (
    "Steer2Edit never loads pickles. If you trust the file, convert it once: "
    'python -c "import torch; from safetensors.torch import save_file; '
    "save_file(torch.load('adapter_model.bin', weights_only=True), 'adapter_model.safetensors')\" "
    "and save the adapter again with save_pretrained so its config records the tensor digest."
)


def split_key(key: str, adapter_name: str | None = None) -> tuple[str, str] | None:
    """(module, tensor name) of a Steer2Edit state-dict key, without PEFT's prefix or the adapter name."""
    if adapter_name is not None:
        key = key.removesuffix(f".{adapter_name}")
    module, _, tensor = key.rpartition(".")
    if tensor not in TENSOR_NAMES:
        return None
    return module.removeprefix(PEFT_PREFIX), tensor


def by_module(state: Mapping[str, torch.Tensor], adapter_name: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Steer2Edit tensors grouped by module; keys that are not Steer2Edit tensors are left out."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        parts = split_key(key, adapter_name)
        if parts is not None:
            grouped.setdefault(parts[0], {})[parts[1]] = tensor
    return grouped


def tensor_digest(state: Mapping[str, torch.Tensor], adapter_name: str | None = None) -> str:
    """sha256 over every Steer2Edit tensor (module, name, dtype, shape, bytes), in a fixed order, then over every
    other tensor (the modules_to_save copies) by key."""
    digest = hashlib.sha256()

    def add(first: str, second: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{first}\0{second}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())

    grouped = by_module(state, adapter_name)
    for module in sorted(grouped):
        for name in sorted(grouped[module]):
            add(module, name, grouped[module][name])
    for key in sorted(key for key in state if split_key(key, adapter_name) is None):
        add(key, "saved module", state[key])
    return "sha256:" + digest.hexdigest()


def _is_saved_module_tensor(key: str, modules_to_save: Sequence[str]) -> bool:
    module = key.removeprefix(PEFT_PREFIX).rpartition(".")[0]
    return any(module == name or module.endswith("." + name) for name in modules_to_save)


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
            detail = {"edited_components": _components_problem, "base_model_signature": _signature_problem}.get(name)
            reason = detail(value) if detail else None
            problems.append(f"{name} must be {description}, got {value!r}" + (f" ({reason})" if reason else ""))
    return problems


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw JSON object of an adapter_config.json, or one AdapterValidationError naming the file."""
    path = Path(path)
    _require_regular_file(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterValidationError(f"{path}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise AdapterValidationError(f"{path}: JSON nested too deeply to be an adapter config") from error
    if not isinstance(content, dict):
        raise AdapterValidationError(f"{path}: holds a JSON {type(content).__name__}, not an object")
    return content


def check_saved_config(content: Mapping[str, Any], known_fields: set[str], where: str) -> None:
    """The checks only a file needs: required keys present, no key that nobody reads."""
    missing = [name for name in REQUIRED_IN_FILES if name not in content]
    if missing:
        raise AdapterValidationError(f"{where}: lacks {', '.join(missing)}; not a config written by save_pretrained")
    unknown = sorted(set(content) - known_fields)
    if unknown:
        raise AdapterValidationError(f"{where}: unknown key(s) {unknown}; this steer2edit-peft does not read them")
    problems = field_problems(content)
    if problems:
        raise AdapterValidationError(f"{where}: " + "; ".join(problems))


# ---------------------------------------------------------------- weights files


def _require_regular_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        kind = "a dangling link" if os.path.islink(path) else "missing"
        raise AdapterValidationError(f"{path} is {kind}") from error
    if not stat.S_ISREG(mode):
        raise AdapterValidationError(f"{path} is not a regular file")


def locate_weights(folder_or_repo: str, subfolder: str | None, hub_kwargs: Mapping[str, Any]) -> Path:
    """The local path of adapter_model.safetensors: in a folder, or downloaded from the Hub. Pickles are refused."""
    folder = Path(folder_or_repo) / subfolder if subfolder else Path(folder_or_repo)
    if folder.is_dir():
        weights = folder / WEIGHTS_NAME
        if os.path.lexists(weights):
            _require_regular_file(weights)
            return weights
        pickled = [name for name in PICKLED_WEIGHTS if (folder / name).exists()]
        if pickled:
            raise AdapterValidationError(f"{folder} holds {pickled[0]} but no {WEIGHTS_NAME}. {CONVERT_PICKLE_HINT}")
        raise AdapterValidationError(f"{folder} holds no {WEIGHTS_NAME}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(folder_or_repo, WEIGHTS_NAME, subfolder=subfolder, **hub_kwargs))
    except EntryNotFoundError as error:
        raise AdapterValidationError(
            f"{folder_or_repo} has no {WEIGHTS_NAME}; Steer2Edit adapters are safetensors only. {CONVERT_PICKLE_HINT}"
        ) from error


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or malformed file is one AdapterValidationError."""
    from safetensors.torch import load_file

    _require_regular_file(path)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for bad headers and sizes
        raise AdapterValidationError(f"{path} is truncated or not a valid safetensors file: {error}") from error


# ---------------------------------------------------------------- tensors


def _flat_components(terms: list[list[int]]) -> tuple[list[int], list[int]]:
    return [i for term in terms for i in term], [t for t, term in enumerate(terms) for _ in term]


def check_module_tensors(module: str, tensors: Mapping[str, torch.Tensor], strength: float) -> None:
    """One module's tensors agree with each other: names, dtypes, shapes, finite values, sane magnitudes."""
    missing = [name for name in TENSOR_NAMES if name not in tensors]
    if missing:
        raise AdapterValidationError(f"{module}: the weights lack {missing[0]}")
    for name in FLOAT_TENSORS:
        tensor = tensors[name]
        if tensor.dtype not in FLOAT_DTYPES:
            raise AdapterValidationError(
                f"{module}.{name}: dtype {tensor.dtype}, expected a float dtype ({FLOAT_DTYPE_NAMES})"
            )
        if not torch.isfinite(tensor).all():
            raise AdapterValidationError(f"{module}.{name}: holds NaN/inf values")
    for name in INDEX_TENSORS:
        if tensors[name].dtype != torch.int64 or tensors[name].ndim != 1:
            raise AdapterValidationError(f"{module}.{name}: must be a 1-D int64 tensor")
    u, k, magnitudes = (tensors[name] for name in FLOAT_TENSORS)
    indices, term = tensors["steer2edit_indices"], tensors["steer2edit_term"]
    count = indices.shape[0]
    if u.ndim != 2 or k.ndim != 2 or magnitudes.shape != (count,) or term.shape != (count,) or k.shape[0] != count:
        raise AdapterValidationError(
            f"{module}: inconsistent shapes u {tuple(u.shape)}, k {tuple(k.shape)}, lambda {tuple(magnitudes.shape)}, "
            f"indices {tuple(indices.shape)}, term {tuple(term.shape)}"
        )
    if count and (int(term.min()) < 0 or int(term.max()) >= u.shape[0] or int(indices.min()) < 0):
        raise AdapterValidationError(f"{module}: component terms or indices out of range")
    if count:
        size = strength * magnitudes.double().abs() * u.double().norm(dim=1)[term] * k.double().norm(dim=1)
        largest = float(size.max())
        if largest > MAX_EDIT_MAGNITUDE:
            raise AdapterValidationError(
                f"{module}: an edited component moves its weights by {largest:.3g}, above the bound "
                f"{MAX_EDIT_MAGNITUDE:g} (|strength * lambda| * |u| * |k|); the edit is corrupt or rho is far too small"
            )


def check_saved_keys(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Every key of a saved adapter carries PEFT's prefix; PEFT would skip the others silently (an empty edit)."""
    bare = sorted(key for key in state if not key.startswith(PEFT_PREFIX))
    if bare:
        raise AdapterValidationError(
            f"{where}: tensor key {bare[0]!r} ({len(bare)} in all) lacks PEFT's {PEFT_PREFIX!r} prefix, so PEFT "
            "would load it as no edit at all; save the adapter with save_pretrained (or add the prefix to every key)"
        )


def check_weights(
    state: Mapping[str, torch.Tensor],
    edited_components: Mapping[str, list[list[int]]],
    strength: float,
    digest: str | None,
    where: str,
    adapter_name: str | None = None,
    modules_to_save: Sequence[str] | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Model-free checks of a whole adapter's tensors against its config; returns them grouped by module.

    Besides Steer2Edit's own tensors the file may hold only the full copies of ``modules_to_save``."""
    others = sorted(key for key in state if split_key(key, adapter_name) is None)
    unknown = [key for key in others if not _is_saved_module_tensor(key, modules_to_save or [])]
    if unknown:
        raise AdapterValidationError(f"{where}: unexpected tensor {unknown[0]} ({len(unknown)} in all)")
    for key in others:  # full copies of the modules_to_save: any floating values, as long as they are finite
        tensor = state[key]
        if tensor.dtype not in FLOAT_DTYPES or not bool(torch.isfinite(tensor).all()):
            raise AdapterValidationError(
                f"{where}: {key} (a module saved whole) is not finite {FLOAT_DTYPE_NAMES} values"
            )
    grouped = by_module(state, adapter_name)
    for module, tensors in grouped.items():
        check_module_tensors(module, tensors, strength)
        indices, terms = _flat_components(edited_components.get(module, [[]]))
        if tensors["steer2edit_indices"].tolist() != indices or tensors["steer2edit_term"].tolist() != terms:
            raise AdapterValidationError(
                f"{where}: {module} edits components {tensors['steer2edit_indices'].tolist()[:6]} in the weights but "
                f"{indices[:6]} in the config; the two files come from different saves"
            )
    absent = sorted(set(edited_components) - set(grouped))
    if absent:
        raise AdapterValidationError(f"{where}: the config edits {absent[0]}, which has no tensors in the weights")
    if digest is not None and tensor_digest(state, adapter_name) != digest:
        raise AdapterValidationError(
            f"{where}: the weights do not match the tensor_digest in the config: the config and the weights come from "
            "different saves (files mixed by hand, or a save that was running while they were read)"
        )
    return grouped


def check_weights_fit(
    grouped: Mapping[str, Mapping[str, torch.Tensor]], shapes: Mapping[str, Mapping[str, tuple[int, ...]]]
) -> None:
    """The tensors fit the model: one set per targeted module, each of the expected shape."""
    missing = sorted(set(shapes) - set(grouped))
    if missing:
        raise AdapterValidationError(
            f"the adapter weights lack the tensors of {len(missing)} module(s), e.g. {missing[0]}"
        )
    extra = sorted(set(grouped) - set(shapes))
    if extra:
        raise AdapterValidationError(
            f"the adapter weights hold tensors for {len(extra)} module(s) the model does not target, e.g. {extra[0]}"
        )
    for module, expected in shapes.items():
        for name, shape in expected.items():
            actual = tuple(grouped[module][name].shape)
            if actual != shape:
                raise AdapterValidationError(f"{module}.{name}: shape {actual} in the weights, expected {shape}")
