"""`steer2edit probe`: probe data from the model's own sampled responses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from .arguments import add_command, add_model, load, positive_int, positive_number, prompt_list


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "probe",
        "make probe data from the model's own sampled responses",
        "Sample the model's responses to prompts with and without a behaviour (a built-in one, or any system "
        "prompt you write), keep the ones the behaviour's judges confirm, pair them on the same prompts, and save "
        "them as JSONL with a header that records how they were made.",
    )
    add_model(parser)
    parser.add_argument(
        "--behaviour", default="refusal", help="refusal, concise or truthful (ignored with --system-prompt)"
    )
    parser.add_argument("--prompts", default=None, help="a .json list / .jsonl of prompts, or a built-in set name")
    parser.add_argument("--system-prompt", default=None, help="a behaviour of your own: responses with it vs without")
    parser.add_argument("--negative-system-prompt", default=None, help="for the unwanted responses (default: none)")
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        help="responses per prompt and class (default: the behaviour's; 1 for refusal, whose prompts are many, else 4)",
    )
    parser.add_argument("--temperature", type=positive_number, default=0.8)
    parser.add_argument("--top-p", type=positive_number, default=0.95)
    parser.add_argument("--max-new-tokens", type=positive_int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-confirm", action="store_true", help="keep every response, judged or not")
    parser.add_argument("--output", type=Path, required=True, help="the .jsonl file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.generation import Sampling
    from ..probes import Behaviour, builtin_prompts, generate_probe, get_behaviour

    if args.output.exists() and not args.overwrite:
        raise Steer2EditError(f"{args.output} exists; choose a new file or pass --overwrite")
    if args.output.suffix != ".jsonl":
        raise Steer2EditError(f"{args.output}: probe data is written as .jsonl")
    if args.system_prompt is not None:
        behaviour = Behaviour.from_system_prompt(args.system_prompt, args.negative_system_prompt)
        prompts = prompt_list(args.prompts) if args.prompts else builtin_prompts("benign")
    else:
        behaviour = get_behaviour(args.behaviour)
        assert behaviour.prompt_set is not None
        prompts = prompt_list(args.prompts or behaviour.prompt_set)
    if not prompts:
        raise Steer2EditError(f"probe generation needs at least one prompt; {args.prompts} holds none")
    model, tokenizer = load(args)
    probe = generate_probe(
        model,
        tokenizer,
        prompts,
        behaviour,
        num_samples=args.num_samples,
        sampling=Sampling(temperature=args.temperature, top_p=min(args.top_p, 1.0), seed=args.seed),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        confirm=not args.no_confirm,
        # Written in one step when generation ends, so an old file stays as it was until then (and is reused
        # when it records this very request: the seeded samples would be the same).
        cache=args.output,
    )
    print(f"{probe} -> {args.output}")
