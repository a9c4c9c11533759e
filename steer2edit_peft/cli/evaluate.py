"""`steer2edit eval`: a model, an adapter and activation steering on held-out prompts."""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from ..core.settings import EVALUATED_BEHAVIOURS
from .arguments import add_command, add_eval, add_model, add_output, load, steering_strength


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "eval",
        "evaluate a model, an adapter and/or activation steering on held-out prompts",
        "Evaluate the base model and, when given, a saved adapter (unmerged) and activation steering side by side.",
    )
    add_model(parser)
    parser.add_argument("--adapter", type=Path, help="adapter folder to evaluate")
    parser.add_argument("--vectors", type=Path, help="steering vectors for the activation-steering baseline")
    parser.add_argument(
        "--steering-strength", type=steering_strength, default=1.0, help="activation steering's multiplier"
    )
    parser.add_argument("--behaviour", choices=EVALUATED_BEHAVIOURS, default="refusal", help="held-out prompt set")
    parser.add_argument(
        "--judge",
        choices=["project", "reference"],
        default="project",
        help="refusal matcher: the project's (a refusal phrase at the start) or the reference code's (any signal "
        "anywhere)",
    )
    add_output(parser, "results.json", required=False)
    add_eval(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder, write_text
    from ..core.judges import ReferenceRefusalMatcher, RefusalMatcher
    from ..evaluation.prompts import evaluation_prompts
    from ..evaluation.suite import evaluate_conditions, results_table

    if args.output:
        check_output_folder(args.output, args.overwrite, ("results.json",))
    if args.backend == "vllm" and args.vectors:
        raise Steer2EditError("activation steering needs forward hooks, which vLLM has not: drop --vectors")
    if args.adapter:
        from ..tuner.report import read_adapter_config

        read_adapter_config(args.adapter)  # a clear error for a folder that holds no Steer2Edit adapter, before loading
    judge = ReferenceRefusalMatcher() if args.judge == "reference" else RefusalMatcher()
    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    conditions, tokenizer = _eval_conditions(args)
    with ExitStack() as stack:
        answer = _vllm_answers(args, conditions[-1].model, stack) if args.backend == "vllm" else None
        results = evaluate_conditions(
            conditions,
            tokenizer,
            prompts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            judge=judge,
            answer=answer,
            measure_kl=answer is None,  # vLLM answers; the teacher-forced KL stays a transformers measurement
        )
    print(results_table(results))
    if args.output:
        text = json.dumps([asdict(r) for r in results], indent=2) + "\n"
        write_text(args.output / "results.json", text, overwrite=args.overwrite)
        print(f"wrote {args.output / 'results.json'}")


def _vllm_answers(args: argparse.Namespace, model: Any, stack: ExitStack) -> Any:
    """One vLLM engine answering every condition: the base model, and the adapter as its exact LoRA."""
    from ..export import edit_terms
    from ..export.vllm import VllmTrialAnswers

    scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="steer2edit-vllm-"))
    rank = edit_terms(model) if args.adapter else 1
    return VllmTrialAnswers(args.model, scratch, max_new_tokens=args.max_new_tokens, dtype=args.dtype, max_rank=rank)


def _eval_conditions(args: argparse.Namespace) -> tuple[list[Any], Any]:
    from peft import PeftModel

    from ..evaluation.suite import Condition, combined
    from ..extraction import SteeringVectors, steer

    model, tokenizer = load(args)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    reference = model.disable_adapter if args.adapter else None
    prefix = "vllm " if args.backend == "vllm" else ""
    conditions = [Condition(f"{prefix}base", model, reference) if reference else Condition(f"{prefix}base", model)]
    if args.vectors:
        vectors = SteeringVectors.load(args.vectors)
        off = reference or conditions[0].context
        steering = combined(off, lambda: steer(model, vectors, args.steering_strength))
        conditions.append(Condition(f"steering x{args.steering_strength:g}", model, steering))
    if args.adapter:
        conditions.append(Condition(f"{prefix}adapter {args.adapter.name}", model))
    return conditions, tokenizer
