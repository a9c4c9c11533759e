"""Which dtype `--dtype auto` should pick: one forward pass of SmolLM2-135M-Instruct (batch 4 x 64 tokens, no KV
cache) in float32 and in bfloat16, timed side by side (round-robin, medians), with what `auto` picks on this machine.

python benchmarks/dtype.py   # writes benchmarks/results/dtype.json
"""

from __future__ import annotations

import torch
from common import interleaved, save_results

from steer2edit_peft.core.models import cpu_computes_bfloat16, dtype_name, load_model


def main() -> None:
    tokens = torch.randint(0, 1000, (4, 64))
    models = {name: load_model(dtype=name)[0] for name in ("float32", "bfloat16")}

    def forward(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)

    seconds = interleaved({name: (lambda m=model: forward(m)) for name, model in models.items()}, repeats=3)
    payload = {
        "seconds": seconds,
        "bfloat16 / float32 time": seconds["bfloat16"] / seconds["float32"],
        "cpu computes bfloat16 (AVX512-BF16 or AMX)": cpu_computes_bfloat16(),
        "auto picks": dtype_name("auto"),
    }
    print(payload)
    save_results("dtype", payload)


if __name__ == "__main__":
    main()
