"""Extraction throughput: steer2edit's batched extraction vs a bare forward pass vs per-sample extraction.

python benchmarks/extraction.py [--examples 64] [--batch-size 16] [--repeats 3]

On SmolLM2-135M-Instruct (CPU), float32 and bfloat16. All three compute the same vectors; the script checks it.
The probe: AdvBench requests with a fixed refusal (positive) and Alpaca instructions with a short answer (negative).
"""

from __future__ import annotations

import argparse

import torch
from common import advbench_goals, alpaca_instructions, interleaved, save_results

from steer2edit_peft import ContrastiveDataset, extract_steering_vectors
from steer2edit_peft.core.models import load_model
from steer2edit_peft.core.tokens import collate, encode_example, pad_token_id
from steer2edit_peft.extraction.extract import edited_modules

REFUSAL = "I can't help with that request, because it could cause real harm to people."
ANSWER = "Sure. Here is a clear, step-by-step answer to your question, with a short example at the end."


def probe(examples: int) -> ContrastiveDataset:
    half = examples // 2
    goals, instructions = advbench_goals(), alpaca_instructions()  # 520 and 100: both cycled for big sizes
    return ContrastiveDataset.from_lists(
        [goals[i % len(goals)] for i in range(half)],
        [REFUSAL] * half,
        [instructions[i % len(instructions)] for i in range(half)],
        [ANSWER] * half,
        "benchmark probe",
    )


def batches(tokenizer, dataset, batch_size):
    encoded = [encode_example(tokenizer, e) for e in dataset]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [
        collate([encoded[i] for i in order[s : s + batch_size]], pad_token_id(tokenizer), "right")
        for s in range(0, len(order), batch_size)
    ]


@torch.no_grad()
def bare_forward(model, prepared, full: bool) -> None:
    """The practical limit: the same batches through the model, no hooks (full: with the LM head)."""
    body = model if full else model.model
    for input_ids, attention_mask, position_ids, _ in prepared:
        body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)


@torch.no_grad()
def per_sample_extraction(model, tokenizer, dataset) -> dict[str, dict[str, torch.Tensor]]:
    """The reference-code style: one example at a time, full forward, every response activation kept, mean at the end."""
    modules = edited_modules(model)
    stored: dict[str, dict[str, list[torch.Tensor]]] = {name: {"pre": [], "post": []} for name in modules}
    labels: list[bool] = []
    current: dict[str, int] = {}

    def hook(name):
        def record(module, args, output):
            start = current["start"]
            stored[name]["pre"].append(args[0][0, start:].float().cpu())
            stored[name]["post"].append(output[0, start:].float().cpu())

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        for example in dataset:
            item = encode_example(tokenizer, example)
            current["start"] = item.response_start
            labels.append(example.positive)
            model(input_ids=torch.tensor([item.input_ids]))
    finally:
        for handle in handles:
            handle.remove()
    means: dict[str, dict[str, torch.Tensor]] = {}
    for name, kinds in stored.items():
        for kind, tensors in kinds.items():
            for flag, suffix in ((True, "pos"), (False, "neg")):
                chosen = torch.cat([t for t, label in zip(tensors, labels) if label == flag])
                means.setdefault(f"{kind}_{suffix}", {})[name] = chosen.mean(0)
    return means


def measure(dtype: torch.dtype, dataset: ContrastiveDataset, batch_size: int, repeats: int) -> dict:
    model, tokenizer = load_model(dtype=dtype)
    prepared = batches(tokenizer, dataset, batch_size)
    tokens = int(sum(int(b[1].sum()) for b in prepared))
    vectors = {}

    def ours():
        vectors["ours"] = extract_steering_vectors(
            model, tokenizer, dataset, batch_size=batch_size, show_progress=False
        )

    def reference():
        vectors["per_sample"] = per_sample_extraction(model, tokenizer, dataset)

    seconds = interleaved(
        {
            "steer2edit extraction": ours,
            "bare forward, decoder only": lambda: bare_forward(model, prepared, full=False),
            "bare forward, with LM head": lambda: bare_forward(model, prepared, full=True),
            "per-sample extraction (batch 1)": reference,
        },
        repeats=repeats,
    )
    worst = 0.0
    for key in ("post_pos", "post_neg", "pre_pos", "pre_neg"):
        ours_means, theirs = getattr(vectors["ours"], key), vectors["per_sample"][key]
        for module in ours_means:
            scale = theirs[module].abs().max().clamp_min(1e-6)
            worst = max(worst, float((ours_means[module] - theirs[module]).abs().max() / scale))
    base = seconds["steer2edit extraction"]
    print(f"\n{dtype}: {tokens} tokens")
    for k, v in seconds.items():
        print(f"  {k:<34} {v:7.3f} s  {tokens / v:9.0f} tok/s  x{v / base:.2f} of steer2edit")
    print(f"  vectors agree to {worst:.2e} (max relative difference)")
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": {k: tokens / v for k, v in seconds.items()},
        "ratio_to_steer2edit": {k: v / base for k, v in seconds.items()},
        "max_relative_difference_of_means": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset = probe(args.examples)
    report = {"examples": len(dataset), "batch_size": args.batch_size, "by_dtype": {}}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        report["by_dtype"][name] = measure(dtype, dataset, args.batch_size, args.repeats)
    save_results("extraction", report)


if __name__ == "__main__":
    main()
