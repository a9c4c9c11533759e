"""What a saved Steer2Edit adapter must look like, and reading one so that nothing malformed gets through.

Every check here runs before the model is touched. A saved adapter is ``adapter_config.json`` plus
``adapter_model.safetensors``; the config records a digest of the tensors, so a config and weights that come from
two different saves (a concurrent save, files copied by hand) are refused instead of loaded as a silent mix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import AdapterValidationError
from .config_rules import DIFFERENT_SAVES, require_regular_file

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


# ---------------------------------------------------------------- weights files


def locate_weights(folder_or_repo: str, subfolder: str | None, hub_kwargs: Mapping[str, Any]) -> Path:
    """The local path of adapter_model.safetensors: in a folder, or downloaded from the Hub. Pickles are refused."""
    folder = Path(folder_or_repo) / subfolder if subfolder else Path(folder_or_repo)
    if folder.is_dir():
        weights = folder / WEIGHTS_NAME
        if os.path.lexists(weights):
            require_regular_file(weights)
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

    require_regular_file(path)
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
                f"{indices[:6]} in the config: {DIFFERENT_SAVES}"
            )
    absent = sorted(set(edited_components) - set(grouped))
    if absent:
        raise AdapterValidationError(f"{where}: the config edits {absent[0]}, which has no tensors in the weights")
    if digest is not None and tensor_digest(state, adapter_name) != digest:
        raise AdapterValidationError(
            f"{where}: the weights do not match the tensor_digest in the config: {DIFFERENT_SAVES}"
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
