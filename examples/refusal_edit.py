"""Edit SmolLM2-135M-Instruct to refuse harmful requests, save the edit as a PEFT adapter, reload and merge it.

python examples/refusal_edit.py [--model embedded:smollm2-135m-instruct] [--output outputs/refusal-edit]
"""

from __future__ import annotations

import argparse

from peft import PeftModel

from steer2edit_peft import Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors
from steer2edit_peft.core.models import EMBEDDED_MODEL, load_model
from steer2edit_peft.evaluation import generate_responses, refusal_rate
from steer2edit_peft.evaluation.prompts import builtin_heldout


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="transformers id, folder or .gguf file")
    parser.add_argument("--output", default="outputs/refusal-edit", help="where the adapter is saved")
    parser.add_argument("--num-prompts", type=int, default=8, help="held-out harmful and benign prompts each")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model)
    held_out = builtin_heldout("refusal")  # never used for probing
    harmful, benign = held_out["harmful"][: args.num_prompts], held_out["benign"][: args.num_prompts]

    # 1. Steering vectors from the built-in probe set (harmful requests + refusals vs benign requests + answers).
    vectors = extract_steering_vectors(model, tokenizer, builtin_probe("refusal"), batch_size=16)
    # 2. The edit: attention heads of the upper half whose output aligns with the refusal direction.
    num_layers = model.config.num_hidden_layers
    config = Steer2EditConfig(
        rho_attn=0.1,
        rho_mlp=None,
        alpha=0.6,
        key_direction="weight",  # the paper's keys, normalize(W^T v): no reference data needed
        layers_to_transform=list(range(num_layers // 2, num_layers)),
    )
    peft_model = edit_model(model, vectors, config, behaviour="refusal")
    print(peft_model.edit_reports["default"].to_table(top=2, edited_only=True))

    # 3. Before and after, on prompts the probe never saw.
    generate = dict(max_new_tokens=args.max_new_tokens, show_progress=False)
    with peft_model.disable_adapter():
        before = generate_responses(peft_model, tokenizer, harmful + benign, **generate)
    after = generate_responses(peft_model, tokenizer, harmful + benign, **generate)
    n = len(harmful)
    rates = {
        "refusal_before": refusal_rate(harmful, before[:n]),
        "refusal_after": refusal_rate(harmful, after[:n]),
        "over_refusal_after": refusal_rate(benign, after[n:]),
    }
    for prompt, old, new in list(zip(harmful + benign, before, after))[:: max(1, n // 2)]:
        print(f"\n> {prompt}\n  base:   {old[:120]!r}\n  edited: {new[:120]!r}")
    print(f"\n{rates}")

    # 4. Save, reload with plain PEFT (after importing steer2edit_peft), merge.
    peft_model.save_pretrained(args.output)
    reloaded = PeftModel.from_pretrained(peft_model.unload(), args.output)
    same = generate_responses(reloaded, tokenizer, harmful + benign, **generate) == after
    merged = reloaded.merge_and_unload()
    print(f"adapter saved to {args.output}; reloaded outputs match: {same}; merged model: {type(merged).__name__}")
    return rates


if __name__ == "__main__":
    main()
