"""A random edit of the embedded SmolLM2 and its GGUF exports, shared by the GGUF tests and the llama.cpp lane."""

from __future__ import annotations

from pathlib import Path

import torch

# Two attention outputs and one MLP output; the second module carries two terms (a combined edit).
EDITED = {
    "model.layers.20.self_attn.o_proj": [[1, 4]],
    "model.layers.27.self_attn.o_proj": [[0], [6]],
    "model.layers.24.mlp.down_proj": [[3, 100, 1000]],
}


def edited_embedded_model(dtype: torch.dtype = torch.float32):
    """(PeftModel with a random edit of EDITED, tokenizer), on the dequantized embedded model; the edit is scaled so
    that it moves logits visibly."""
    from peft import get_peft_model

    from steer2edit_peft import Steer2EditConfig
    from steer2edit_peft.core.models import load_model

    model, tokenizer = load_model(dtype=dtype)
    torch.manual_seed(0)
    config = Steer2EditConfig(init_weights=False, target_modules=sorted(EDITED), edited_components=EDITED, strength=4.0)
    return get_peft_model(model, config), tokenizer


def export_all(peft_model, folder: Path, float32: bool = False) -> dict[str, Path]:
    """adapter.gguf, merged.gguf (in the base's Q4_1) and the base; with ``float32`` also merged-f32.gguf and
    base-f32.gguf, the dequantized weights llama.cpp then computes with unquantized."""
    from steer2edit_peft.core.models import embedded_gguf_file
    from steer2edit_peft.export.gguf import export_gguf_lora, export_merged_gguf

    folder.mkdir(parents=True, exist_ok=True)
    base = embedded_gguf_file()
    files = {
        "base": base,
        "adapter": export_gguf_lora(peft_model, folder / "adapter.gguf"),
        "merged": export_merged_gguf(peft_model, base, folder / "merged.gguf")["path"],
    }
    if float32:
        files["merged-f32"] = export_merged_gguf(peft_model, base, folder / "merged-f32.gguf", tensor_type="f32")[
            "path"
        ]
        strength = peft_model.peft_config["default"].strength
        peft_model.base_model.set_strength(0.0)  # the same file with no edit: the dequantized base
        try:
            files["base-f32"] = export_merged_gguf(peft_model, base, folder / "base-f32.gguf", tensor_type="f32")[
                "path"
            ]
        finally:
            peft_model.base_model.set_strength(strength)
    return files
