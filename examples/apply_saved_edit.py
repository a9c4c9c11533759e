"""Apply a saved Steer2Edit adapter to held-out prompts of each kind and show, side by side, what it changed and where
it fails: harmful requests it still answers, safe ones it refuses.

python examples/apply_saved_edit.py outputs/demo/adapter [--per-kind 5] [--model embedded:smollm2-135m-instruct]

The prompts are the first ones of each held-out set (never probed, not picked): harmful requests and plainly benign
ones (evaluation/data/refusal.json), and safe requests that sound risky (the borderline report half). Refusal is the
project's refusal-phrase matcher; an answer that changes its meaning without refusing shows only in the side-by-side
text, so read it.
"""

from __future__ import annotations

import argparse

from peft import PeftModel

import steer2edit_peft  # noqa: F401  (registers the STEER2EDIT type: import it before PeftModel.from_pretrained)
from steer2edit_peft.core.judges import RefusalMatcher
from steer2edit_peft.core.models import EMBEDDED_MODEL, load_model
from steer2edit_peft.evaluation import generate_responses
from steer2edit_peft.evaluation.prompts import borderline_prompts, builtin_heldout

# kind -> whether the edit should make the model refuse it
SHOULD_REFUSE = {"harmful": True, "borderline": False, "benign": False}


def held_out_prompts(per_kind: int) -> dict[str, list[str]]:
    heldout = builtin_heldout("refusal")
    return {
        "harmful": heldout["harmful"][:per_kind],
        "borderline": borderline_prompts()[:per_kind],
        "benign": heldout["benign"][:per_kind],
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[str]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", help="folder written by save_pretrained (or `steer2edit edit`, `steer2edit demo`)")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="the base model the adapter was made for")
    parser.add_argument("--per-kind", type=int, default=5, help="held-out prompts of each kind")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    kinds = held_out_prompts(args.per_kind)
    prompts = [prompt for group in kinds.values() for prompt in group]

    base, tokenizer = load_model(args.model)
    model = PeftModel.from_pretrained(base, args.adapter)  # validated against the base model before injection
    generate = dict(max_new_tokens=args.max_new_tokens, show_progress=False)
    with model.disable_adapter():
        before = generate_responses(model, tokenizer, prompts, **generate)
    after = generate_responses(model, tokenizer, prompts, **generate)
    merged = generate_responses(model.merge_and_unload(), tokenizer, prompts, **generate)  # the edit in the weights

    judge = RefusalMatcher()
    answers: dict[str, dict[str, list[str]]] = {}
    failures = []
    start = 0
    for kind, group in kinds.items():
        answers[kind] = {"base": before[start : start + len(group)], "edit": after[start : start + len(group)]}
        answers[kind]["merged"] = merged[start : start + len(group)]
        print(f"\n=== {kind} ({'the edit should refuse' if SHOULD_REFUSE[kind] else 'the edit should answer'})")
        for number, prompt in enumerate(group):
            refused = {name: judge(prompt, text[number]) for name, text in answers[kind].items()}
            print(f"\n> {prompt}")
            for name in ("base", "edit"):
                verdict = "refuses" if refused[name] else "answers"
                print(f"  {name:>4} [{verdict}]: {answers[kind][name][number][:150]!r}")
            if refused["edit"] != SHOULD_REFUSE[kind]:
                failures.append(f"{kind}: {'answers' if SHOULD_REFUSE[kind] else 'refuses'} {prompt!r}")
        start += len(group)
    same_merged = sum(a == m for a, m in zip(after, merged))
    print(f"\nmerged model: {same_merged} of {len(prompts)} answers identical to the unmerged edit (bfloat16 rounding)")
    print(f"where the edit fails ({len(failures)} of {len(prompts)} prompts):")
    for failure in failures:
        print(f"  {failure}")
    return answers


if __name__ == "__main__":
    main()
