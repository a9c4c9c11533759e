"""Exporting an edit: an exactly equal LoRA adapter (for LoRA stacks and multi-LoRA servers) and GGUF files.

LoRA (``lora``): per module the edit is ``delta W = strength * u^T K`` (u [terms, out], K [terms, in], zero
outside the edited columns), so ``lora_B = strength * u^T``, ``lora_A = K`` with scaling 1 reproduce it to
float32 rounding. GGUF (``gguf``): the same factors as a llama.cpp LoRA adapter, or the edit merged into a copy
of the base GGUF, for llama.cpp, Ollama and LM Studio.
"""

from .lora import bundle_for_hotswap, edit_as_lora, edit_terms, edited_layers, lora_factors, padded, to_lora, write_lora

__all__ = [
    "bundle_for_hotswap",
    "edit_as_lora",
    "edit_terms",
    "edited_layers",
    "lora_factors",
    "padded",
    "to_lora",
    "write_lora",
]
