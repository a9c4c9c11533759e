"""Edit a model to answer briefly: the built-in `concise` probe pairs short and long answers to the same questions.

python examples/concise_edit.py [--model embedded:smollm2-135m-instruct] [--output outputs/concise-edit]
"""

from __future__ import annotations

import argparse

from steer2edit_peft import Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors
from steer2edit_peft.core.models import EMBEDDED_MODEL, load_model
from steer2edit_peft.evaluation import generate_responses, mean_token_kl, response_lengths
from steer2edit_peft.evaluation.prompts import builtin_heldout


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="transformers id, folder or .gguf file")
    parser.add_argument("--output", default="outputs/concise-edit", help="where the adapter is saved")
    parser.add_argument("--num-questions", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--strength", type=float, default=1.0, help="runtime strength of the edit")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model)
    questions = builtin_heldout("concise")["questions"][: args.num_questions]

    vectors = extract_steering_vectors(model, tokenizer, builtin_probe("concise"), batch_size=16)
    # Length is spread over many MLP neurons, so the MLP family carries most of this edit.
    config = Steer2EditConfig(rho_attn=0.2, rho_mlp=0.3, alpha=0.7, key_direction="weight", strength=args.strength)
    peft_model = edit_model(model, vectors, config, behaviour="concise")
    print(peft_model.edit_reports["default"].to_table(top=2, edited_only=True))

    generate = dict(max_new_tokens=args.max_new_tokens, show_progress=False)
    with peft_model.disable_adapter():
        before = generate_responses(peft_model, tokenizer, questions, **generate)
    after = generate_responses(peft_model, tokenizer, questions, **generate)
    kl = mean_token_kl(peft_model, tokenizer, questions, before, reference=peft_model.disable_adapter)
    lengths = {
        "mean_length_before": sum(response_lengths(tokenizer, before)) / len(before),
        "mean_length_after": sum(response_lengths(tokenizer, after)) / len(after),
        "kl_from_base": kl,
    }
    for question, old, new in list(zip(questions, before, after))[:3]:
        print(f"\n> {question}\n  base:   {old[:140]!r}\n  edited: {new[:140]!r}")
    print(f"\n{lengths}")
    peft_model.save_pretrained(args.output)
    print(f"adapter saved to {args.output}")
    return lengths


if __name__ == "__main__":
    main()
