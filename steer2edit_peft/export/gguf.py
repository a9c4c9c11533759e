"""GGUF exports for llama.cpp, Ollama and LM Studio: the edit as a GGUF LoRA adapter, or merged into the base GGUF.

- LoRA adapter: the exact LoRA factors (``lora_factors``) under llama.cpp's tensor names
  (``blk.N.attn_output.weight.lora_a`` / ``.lora_b``), one uniform rank r with ``adapter.lora.alpha`` = r, since
  llama.cpp scales every tensor by alpha / its own rank: the scale is then exactly 1.
- Merged model: a copy of the base GGUF (every metadata key and every tensor byte) in which only the edited
  weight tensors change: dequantized, edited, and quantized again in their own type, where only the quantization
  blocks the edit touches take new bytes. Or the whole model in f16 / q8_0 / f32 on request.
- A ``Modelfile`` for Ollama beside them.

Files are read and written with the ``gguf`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.architectures import model_text_config, num_layers
from ..core.errors import Steer2EditError
from ..core.files import new_file
from .lora import edit_terms, edited_layers, lora_factors, padded, refuse_fused_experts

# llama.cpp keeps experts in [experts, ...] tensors (blk.N.ffn_down_exps); no tiny MoE GGUF exists here to check an
# export of their edits against, so none is written.
GGUF_INSTEAD = (
    "export the exact LoRA (steer2edit export-lora: PEFT loads it) or a merged transformers model (steer2edit merge) "
    "and convert that with llama.cpp's own convert_hf_to_gguf.py"
)

# transformers model_type -> llama.cpp architecture (gguf.MODEL_ARCH member name)
LLAMA_CPP_ARCHITECTURES = {
    "llama": "LLAMA",
    "mistral": "LLAMA",
    "qwen2": "QWEN2",
    "qwen3": "QWEN3",
    "gemma": "GEMMA",
    "gemma2": "GEMMA2",
    "gemma3": "GEMMA3",
    "gemma3_text": "GEMMA3",
    "phi3": "PHI3",
    "olmo": "OLMO",
    "olmo2": "OLMO2",
    "granite": "GRANITE",
    "smollm3": "SMOLLM3",
    "gpt2": "GPT2",
    "gpt_neox": "GPTNEOX",
    "starcoder2": "STARCODER2",
    "phi": "PHI2",
    "cohere": "COMMAND_R",
}
WHOLE_MODEL_TYPES = ("f32", "f16", "q8_0")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as error:
        raise Steer2EditError("GGUF export needs the gguf package: pip install 'steer2edit-peft[gguf]'") from error
    return gguf


def llama_cpp_architecture(model: Any) -> Any:
    """The gguf.MODEL_ARCH of the model, or a clear error for a family llama.cpp cannot name."""
    gguf = _gguf()
    model_type = getattr(model_text_config(model), "model_type", None)
    if model_type not in LLAMA_CPP_ARCHITECTURES:
        raise Steer2EditError(
            f"llama.cpp has no tensor names for model_type={model_type!r} that steer2edit knows; GGUF export "
            f"supports {sorted(LLAMA_CPP_ARCHITECTURES)}. Export a LoRA (export-lora) or a merged transformers "
            "model (merge) instead"
        )
    return gguf.MODEL_ARCH[LLAMA_CPP_ARCHITECTURES[model_type]]


def gguf_tensor_names(model: Any, modules: list[str]) -> dict[str, str]:
    """llama.cpp's weight tensor name of each module (e.g. blk.3.attn_output.weight)."""
    gguf = _gguf()
    architecture = llama_cpp_architecture(model)
    names = gguf.get_tensor_name_map(architecture, num_layers(model))
    found = {}
    for module in modules:
        name = names.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if name is None:
            raise Steer2EditError(f"{module}: llama.cpp has no tensor name for this module")
        found[module] = name
    return found


def _write(path: Path, writer_for: Any) -> Path:
    """Write a GGUF file whole (core/files.py): a reader never sees half a file."""
    with new_file(path) as temporary:
        writer = writer_for(str(temporary))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def export_gguf_lora(model: Any, path: str | Path, adapter_name: str = "default", rank: int | None = None) -> Path:
    """A GGUF LoRA adapter equal to the edit, for ``llama-cli --lora`` and Ollama's ``ADAPTER``."""
    gguf = _gguf()
    layers = edited_layers(model, adapter_name)
    refuse_fused_experts(layers, "GGUF export", GGUF_INSTEAD)
    rank = rank or edit_terms(model, adapter_name)
    names = gguf_tensor_names(model, list(layers))
    architecture = gguf.MODEL_ARCH_NAMES[llama_cpp_architecture(model)]
    config = getattr(model, "peft_config", {}).get(adapter_name)

    def writer_for(target: str) -> Any:
        writer = gguf.GGUFWriter(target, architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))  # llama.cpp scales by alpha / rank = 1
        writer.add_name(f"steer2edit {getattr(config, 'behaviour', None) or adapter_name} edit")
        for module, layer in layers.items():
            lora_a, lora_b = padded(*lora_factors(layer, adapter_name), rank, module)
            writer.add_tensor(f"{names[module]}.lora_a", lora_a.numpy().astype(np.float32))  # [r, in]
            writer.add_tensor(f"{names[module]}.lora_b", lora_b.numpy().astype(np.float32))  # [out, r]
        return writer

    return _write(Path(path), writer_for)


def _delta(layer: Any, adapter_name: str) -> np.ndarray:
    """delta W in the (out, in) layout GGUF stores weights in, float32."""
    lora_a, lora_b = lora_factors(layer, adapter_name)
    return (lora_b @ lora_a).numpy().astype(np.float32)


def _requantize(gguf: Any, tensor: Any, delta: np.ndarray) -> tuple[np.ndarray, Any, bool]:
    """(data, type, kept its type) of ``tensor`` + ``delta``; only the quantization blocks the edit touches change."""
    kind = tensor.tensor_type
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return (_dequantized(gguf, tensor) + delta).astype(tensor.data.dtype), kind, True
    weights = _dequantized(gguf, tensor) + delta
    try:
        data = gguf.quants.quantize(weights, kind)
    except (NotImplementedError, gguf.quants.QuantError):
        q8 = gguf.GGMLQuantizationType.Q8_0  # no quantizer for this type (K-quants): the closest one there is
        return gguf.quants.quantize(weights, q8), q8, False
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    rows = delta.shape[0]
    touched = (delta.reshape(rows, -1, block) != 0).any(-1)  # [rows, blocks]
    blocks = data.reshape(rows, -1, block_bytes)
    blocks[~touched] = np.asarray(tensor.data).reshape(rows, -1, block_bytes)[~touched]
    return blocks.reshape(data.shape), kind, True


def export_merged_gguf(
    model: Any,
    base_gguf: str | Path,
    path: str | Path,
    adapter_name: str = "default",
    tensor_type: str = "base",
) -> dict[str, Any]:
    """A copy of ``base_gguf`` with the edit merged into its weights; returns what was written.

    ``tensor_type``: "base" keeps every tensor's type (edited ones are quantized again in it, or in Q8_0 where the
    gguf package has no quantizer for it); "f16", "q8_0" or "f32" writes every 2-D weight in that type, the edit
    added to the dequantized base weights (so "f32" holds exactly the weights PEFT computes with).
    """
    gguf = _gguf()
    if tensor_type not in ("base", *WHOLE_MODEL_TYPES):
        raise Steer2EditError(f"tensor_type must be 'base' or one of {WHOLE_MODEL_TYPES}, got {tensor_type!r}")
    layers = edited_layers(model, adapter_name)
    refuse_fused_experts(layers, "GGUF export", GGUF_INSTEAD)
    names = gguf_tensor_names(model, list(layers))
    deltas = {names[module]: _delta(layer, adapter_name) for module, layer in layers.items()}
    reader = gguf.GGUFReader(str(base_gguf))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    missing = sorted(set(deltas) - set(tensors))
    if missing:
        raise Steer2EditError(f"{base_gguf} has no tensor {missing[0]}: is it the GGUF of this adapter's base model?")
    for name, delta in deltas.items():
        shape = tuple(int(n) for n in reversed(tensors[name].shape))
        if shape != delta.shape:
            raise Steer2EditError(f"{base_gguf}: {name} has shape {shape}, the edit {delta.shape}: another model")
    architecture = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    converted: dict[str, str] = {}

    def writer_for(target: str) -> Any:
        writer = gguf.GGUFWriter(target, architecture)
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        for tensor in reader.tensors:
            delta = deltas.get(tensor.name)
            if tensor_type != "base" and len(tensor.shape) == 2:
                target_type = gguf.GGMLQuantizationType[tensor_type.upper()]
                weights = _dequantized(gguf, tensor) + (delta if delta is not None else 0.0)
                data, kind = gguf.quants.quantize(weights, target_type), target_type
            elif delta is not None:
                data, kind, kept = _requantize(gguf, tensor, delta)
                if not kept:
                    converted[tensor.name] = kind.name
            else:
                data, kind = tensor.data, tensor.tensor_type
            writer.add_tensor(tensor.name, data, raw_dtype=kind)
        return writer

    _write(Path(path), writer_for)
    return {"path": Path(path), "edited_tensors": sorted(deltas), "converted_to_q8_0": converted}


def _dequantized(gguf: Any, tensor: Any) -> np.ndarray:
    """A GGUF tensor's weights in float32, in the (out, in) layout."""
    if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(tensor.data, dtype=np.float32)
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


def ollama_modelfile(base: str, adapter: str | None = None, system_prompt: str | None = None) -> str:
    """An Ollama Modelfile: FROM the base (or merged) GGUF, ADAPTER the LoRA; paths relative to the Modelfile."""
    lines = [
        "# Ollama Modelfile written by steer2edit-peft: ollama create NAME -f Modelfile",
        f"FROM {base}",
    ]
    if adapter is not None:
        lines.append(f"ADAPTER {adapter}")
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n"
