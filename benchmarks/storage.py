"""Adapter size on disk and load time: Steer2Edit vs LoRA r=8 on the same modules vs the full model.

python benchmarks/storage.py
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from common import save_results
from peft import LoraConfig, PeftModel, get_peft_model

from steer2edit_peft import Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors
from steer2edit_peft.core.models import load_model
from steer2edit_peft.solver import DEFAULTS, adapter_config


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed_load(base, folder: Path, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model = PeftModel.from_pretrained(base, folder)
        best = min(best, time.perf_counter() - start)
        model.unload()
    return best


def main() -> None:
    base, tokenizer = load_model()
    vectors = extract_steering_vectors(base, tokenizer, builtin_probe("refusal"), show_progress=False)
    adapters = {
        "Steer2Edit, demo edit (heads of layers 14-29)": edit_model(
            copy.deepcopy(base), vectors, adapter_config(DEFAULTS, 30)
        ),
        "Steer2Edit, all layers (rho 0.1/0.3, alpha 0.6)": edit_model(
            copy.deepcopy(base), vectors, Steer2EditConfig(rho_attn=0.1, rho_mlp=0.3, alpha=0.6)
        ),
        "LoRA r=8, every o_proj and down_proj": get_peft_model(
            copy.deepcopy(base), LoraConfig(r=8, target_modules=["o_proj", "down_proj"])
        ),
    }
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full"
        copy.deepcopy(base).save_pretrained(full)
        results["full model (bfloat16 safetensors)"] = {"bytes": folder_bytes(full)}
        for name, model in adapters.items():
            folder = Path(tmp) / str(len(results))
            model.save_pretrained(folder, save_embedding_layers=False)
            results[name] = {"bytes": folder_bytes(folder), "load_seconds": timed_load(copy.deepcopy(base), folder)}
    for name, values in results.items():
        load = f"  load {values['load_seconds'] * 1000:.0f} ms" if "load_seconds" in values else ""
        print(f"{name:<50} {values['bytes'] / 1024:10.1f} KiB{load}")
    save_results("storage", results)


if __name__ == "__main__":
    main()
