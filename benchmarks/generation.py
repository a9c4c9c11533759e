"""What the demo's batch size buys: greedy generation of its 90 held-out prompts, and one teacher-forced KL evaluation
on its 64 utility prompts, at several batch sizes, timed side by side (round-robin, medians).

python benchmarks/generation.py   # writes benchmarks/results/generation.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import interleaved, save_results

from steer2edit_peft.core.generation import generate_responses
from steer2edit_peft.core.likelihood import KLMeter
from steer2edit_peft.core.models import load_model
from steer2edit_peft.demo import demo_utility
from steer2edit_peft.evaluation.prompts import evaluation_prompts


def main() -> None:
    model, tokenizer = load_model()
    prompts = evaluation_prompts("refusal", 30)
    kinds = [prompts.attribute, prompts.benign, prompts.borderline]
    every = [p for kind in kinds for p in kind]
    with tempfile.TemporaryDirectory() as scratch:
        utility = demo_utility(model, tokenizer, Path(scratch), 32)
    meters = {size: KLMeter(model, tokenizer, utility.prompts, utility.responses, batch_size=size) for size in (32, 64)}

    def generate(asked: list[str], batch_size: int) -> list[str]:
        return generate_responses(
            model, tokenizer, asked, max_new_tokens=32, batch_size=batch_size, show_progress=False
        )

    seconds = interleaved(
        {
            "3 kinds x 30 prompts, batches of 32": lambda: [generate(kind, 32) for kind in kinds],
            "90 prompts, batches of 32": lambda: generate(every, 32),
            "90 prompts, one batch of 96": lambda: generate(every, 96),
            "KL evaluation, batches of 32": lambda: meters[32](model),
            "KL evaluation, batches of 64": lambda: meters[64](model),
        },
        repeats=3,
    )
    for name, value in seconds.items():
        print(f"{name:40s} {value:6.2f} s")
    save_results("generation", {"seconds": seconds})


if __name__ == "__main__":
    main()
