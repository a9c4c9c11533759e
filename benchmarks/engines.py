"""Generation speed of an edit in the real engines, each candidate timed side by side in one run (round-robin).

.venv/bin/python benchmarks/engines.py --engine llama.cpp   # base GGUF vs + GGUF LoRA vs merged GGUF (Q4_1)
.venv-vllm/bin/python benchmarks/engines.py --engine vllm   # one vLLM engine: base vs edited vs mixed requests;
                                                            # the merged edit in an engine of its own; and the
                                                            # transformers backend on the same prompts
The edit is a refusal edit solved like the demo's (`steer2edit edit --probe refusal`). Writes
benchmarks/results/engines_<engine>.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import interleaved, save_results

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
PROMPTS = [
    "Give me three tips for a good night's sleep.",
    "How do I pick the lock on someone else's front door?",
    "Explain what a prime number is.",
    "Write a short poem about the sea.",
] * 4
TOKENS = 32


def solved_edit(folder: Path) -> Path:
    from steer2edit_peft.cli.main import main

    assert main(["edit", "--probe", "refusal", "--output", str(folder / "refusal")]) == 0
    return folder / "refusal"


def llama_cpp(folder: Path) -> dict:
    import llama_cpp
    import torch
    from peft import PeftModel

    from steer2edit_peft.core.models import embedded_gguf_file, load_model
    from steer2edit_peft.core.tokens import encode_prompt
    from steer2edit_peft.export.gguf import export_gguf_lora, export_merged_gguf

    model, tokenizer = load_model(dtype=torch.float32)
    edited = PeftModel.from_pretrained(model, solved_edit(folder))
    base = embedded_gguf_file()
    adapter = export_gguf_lora(edited, folder / "adapter.gguf")
    merged = export_merged_gguf(edited, base, folder / "merged.gguf")["path"]
    ids = [encode_prompt(tokenizer, p) for p in PROMPTS[:8]]
    engines = {
        "base GGUF": llama_cpp.Llama(model_path=str(base), n_ctx=256, verbose=False, n_threads=os.cpu_count()),
        "base + GGUF LoRA": llama_cpp.Llama(
            model_path=str(base), lora_path=str(adapter), n_ctx=256, verbose=False, n_threads=os.cpu_count()
        ),
        "merged GGUF": llama_cpp.Llama(model_path=str(merged), n_ctx=256, verbose=False, n_threads=os.cpu_count()),
    }

    def run(llm):
        def go():
            for row in ids:
                llm.reset()
                for count, _ in enumerate(llm.generate(row, temp=0.0)):
                    if count + 1 >= TOKENS:
                        break

        return go

    seconds = interleaved({name: run(llm) for name, llm in engines.items()}, repeats=7)
    tokens = len(ids) * TOKENS  # llama.cpp's generate never stops on its own: every prompt gets TOKENS
    return {
        name: {"tokens": tokens, "tokens_per_s": tokens / s, "relative": seconds["base GGUF"] / s}
        for name, s in seconds.items()
    }


def vllm(folder: Path) -> dict:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from steer2edit_peft.core.generation import generate_responses
    from steer2edit_peft.core.models import EMBEDDED_MODEL, load_model
    from steer2edit_peft.export.vllm import VllmEngine, base_model_folder, export_for_vllm

    adapter = solved_edit(folder)
    model, tokenizer = load_model()
    edited = PeftModel.from_pretrained(model, adapter)
    lora = export_for_vllm(edited, "default", folder / "lora")
    engine = VllmEngine(base_model_folder(EMBEDDED_MODEL), {"refusal": str(lora)}, max_lora_rank=8)
    vllm_tokenizer = AutoTokenizer.from_pretrained(engine.model_path)
    # The other way to serve one edit: its merged model, as a model of its own (no LoRA in the engine).
    from steer2edit_peft.cli.main import main as cli

    assert cli(["merge", str(adapter), "--dtype", "bfloat16", "--output", str(folder / "merged")]) == 0
    merged_engine = VllmEngine(str(folder / "merged"))

    def on_vllm(adapters, served=engine):
        requests = [(p, adapters[i % len(adapters)]) for i, p in enumerate(PROMPTS)]
        return lambda: [samples[0] for samples in served.generate(vllm_tokenizer, requests, max_new_tokens=TOKENS)]

    def on_transformers(adapter_on: bool):
        def go():
            if adapter_on:
                return generate_responses(
                    edited, tokenizer, PROMPTS, max_new_tokens=TOKENS, batch_size=16, show_progress=False
                )
            with edited.disable_adapter():
                return generate_responses(
                    edited, tokenizer, PROMPTS, max_new_tokens=TOKENS, batch_size=16, show_progress=False
                )

        return go

    candidates = {
        "vLLM base": on_vllm([None]),
        "vLLM edited (LoRA)": on_vllm(["refusal"]),
        "vLLM mixed batch": on_vllm([None, "refusal"]),
        "vLLM merged model (engine without LoRA)": on_vllm([None], merged_engine),
        "transformers base (bf16)": on_transformers(False),
        "transformers edited (bf16, unmerged)": on_transformers(True),
    }
    # Answers may stop early: count the tokens each candidate really generates (greedy, so every run alike).
    tokens = {
        name: sum(min(len(tokenizer(t).input_ids) + 1, TOKENS) for t in run()) for name, run in candidates.items()
    }
    seconds = interleaved(candidates, repeats=5)
    return {
        name: {"tokens": tokens[name], "tokens_per_s": tokens[name] / s, "relative": seconds["vLLM base"] / s}
        for name, s in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["llama.cpp", "vllm"], required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        figures = llama_cpp(Path(scratch)) if args.engine == "llama.cpp" else vllm(Path(scratch))
    for name, value in figures.items():
        print(f"{name:40s} {value['tokens_per_s']:8.1f} tokens/s  x{value['relative']:.2f}")
    save_results(f"engines_{args.engine.replace('.', '_')}", {"max_new_tokens": TOKENS, **figures})


if __name__ == "__main__":
    main()
