"""Solve time for every head and neuron of a model, and how it grows with model size.

python benchmarks/solve.py

Models: a tiny random Llama, SmolLM2-135M-Instruct (real weights), and synthetic random Llama configs of about
0.4B and 1.1B parameters (random weights and vectors: the solve cost depends on shapes only).
"""

from __future__ import annotations

import time

import torch
from common import save_results
from transformers import AutoModelForCausalLM, LlamaConfig

from steer2edit_peft import Steer2EditConfig, SteeringVectors, builtin_probe, extract_steering_vectors
from steer2edit_peft.core.models import load_model
from steer2edit_peft.extraction.extract import edited_modules
from steer2edit_peft.solver.scores import solve_edit

SYNTHETIC = {
    "tiny (2 layers, d=32)": dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4),
    "synthetic 0.4B (24 layers, d=1024)": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
    ),
    "synthetic 1.1B (16 layers, d=2048)": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32
    ),
}


def random_vectors(model) -> SteeringVectors:
    """Random means of the right shapes for every edited module."""
    generator = torch.Generator().manual_seed(0)
    modules = edited_modules(model)
    post = {n: torch.randn(m.weight.shape[0], generator=generator) for n, m in modules.items()}
    pre = {n: torch.randn(m.weight.shape[1], generator=generator) for n, m in modules.items()}
    return SteeringVectors(
        post_pos=post, post_neg={n: torch.zeros_like(v) for n, v in post.items()}, pre_pos=pre, pre_neg=pre
    )


def time_solve(model, vectors, repeats: int = 3) -> tuple[float, int, int]:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        edits = solve_edit(model, vectors, Steer2EditConfig(rho_attn=0.1, rho_mlp=0.1, alpha=0.5))
        best = min(best, time.perf_counter() - start)
    heads = sum(e.scores.numel() for e in edits if e.is_attention)
    neurons = sum(e.scores.numel() for e in edits if not e.is_attention)
    return best, heads, neurons


def main() -> None:
    rows = {}
    cases = list(SYNTHETIC.items())
    cases.insert(1, ("SmolLM2-135M-Instruct (real)", None))
    for name, shape in cases:
        if shape is None:
            model, tokenizer = load_model()
            vectors = extract_steering_vectors(model, tokenizer, builtin_probe("refusal"), show_progress=False)
        else:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=256, **shape), dtype=torch.bfloat16)
            vectors = random_vectors(model)
        parameters = sum(p.numel() for p in model.parameters())
        seconds, heads, neurons = time_solve(model, vectors)
        rows[name] = {"parameters": parameters, "heads": heads, "neurons": neurons, "seconds": seconds}
        print(
            f"{name:<38} {parameters / 1e6:8.1f}M params  {heads:5} heads {neurons:7} neurons  {seconds * 1000:8.1f} ms"
        )
        del model
    save_results("solve", rows)


if __name__ == "__main__":
    main()
