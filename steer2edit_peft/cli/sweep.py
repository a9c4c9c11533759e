"""`steer2edit sweep`: search the trade-off between the behaviour and the KL from the base."""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..core.architectures import model_text_config, num_layers
from ..core.errors import Steer2EditError
from ..core.settings import EVALUATED_BEHAVIOURS
from .arguments import (
    add_command,
    add_eval,
    add_model,
    add_output,
    add_reference,
    add_vectors_or_probe,
    extracted_vectors,
    load,
    load_utility,
    number,
    positive_int,
)


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "sweep",
        "search for the strongest edit whose KL from the base stays under a budget",
        "Search rho_attn, rho_mlp, alpha and the first edited layer with optuna (two objectives: the behaviour on "
        "held-out prompts, and the KL from the base on benign prompts), save the strongest edit within --max-kl, "
        "and draw the Pareto frontier.",
    )
    add_model(parser)
    parser.add_argument(
        "--behaviour",
        choices=EVALUATED_BEHAVIOURS,
        default=None,
        help="held-out prompts the trials are scored on (default: the behaviour the --vectors were extracted for, "
        "else refusal)",
    )
    add_vectors_or_probe(
        parser, "probe data instead of the behaviour's own: a .jsonl/.json/.csv file or Hub dataset", required=False
    )
    add_reference(parser)
    parser.add_argument("--max-kl", type=number, default=0.05, help="KL budget in nats per token")
    parser.add_argument("--trials", type=positive_int, default=20, help="optuna trials per method")
    parser.add_argument("--compare-steering", action="store_true", help="also search activation steering")
    parser.add_argument("--seed", type=int, default=0)
    add_output(parser, "the adapter, trials.json, frontier.png")
    add_eval(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder, staged
    from ..core.settings import defaults_for
    from ..evaluation.sweep import best_under
    from ..extraction import SteeringVectors
    from ..solver import edit_config_from, edit_model

    if args.backend == "vllm" and args.compare_steering:
        raise Steer2EditError(
            "activation steering needs forward hooks, which vLLM has not: drop --compare-steering or use "
            "--backend transformers"
        )
    check_output_folder(args.output, args.overwrite)
    saved = SteeringVectors.load(args.vectors) if args.vectors else None
    args.behaviour = args.behaviour or (saved.behaviour if saved else "refusal")
    if args.behaviour not in EVALUATED_BEHAVIOURS:
        named = f"were extracted for {args.behaviour!r}" if args.behaviour else "name no behaviour (a probe file)"
        raise Steer2EditError(
            f"{args.vectors}: these vectors {named}, and sweep scores trials on the held-out prompts of "
            f"{' or '.join(EVALUATED_BEHAVIOURS)}: pass --behaviour"
        )
    model, tokenizer = load(args)
    settings = defaults_for(args.behaviour)
    utility = load_utility(args.reference, model, tokenizer, args.batch_size)
    vectors = saved or extracted_vectors(
        args.probe or args.behaviour, model, tokenizer, utility, args.batch_size, settings
    )
    trials = search_trials(args, model, tokenizer, vectors, settings)
    # A trial whose threshold kept nothing scores as the base model: it is no edit to save.
    editing = [t for t in trials["Steer2Edit"] if t.details.get("edited_heads", 0) + t.details.get("edited_neurons", 0)]
    if not editing:
        raise Steer2EditError(f"no trial of {len(trials['Steer2Edit'])} edited anything; run more --trials")
    best = best_under(editing, args.max_kl)
    if best is None:
        lowest = min(t.kl for t in editing)
        raise Steer2EditError(f"no edit tried stays under KL {args.max_kl}; the lowest KL reached was {lowest:.4f}")
    peft_model = edit_model(
        model, vectors, edit_config_from(best.params, num_layers(model), settings), behaviour=args.behaviour
    )
    with staged(args.output, args.overwrite) as staging:
        write_trials(args, trials, staging)
        peft_model.save_pretrained(str(staging / "adapter"), save_embedding_layers=False)
    label = _label(args.behaviour)
    print(f"wrote {args.output / 'frontier.png'}")
    print(f"strongest edit under KL {args.max_kl}: {label} {best.attribute:+.3f}, KL {best.kl:.4f}, {best.params}")
    print(f"adapter saved to {args.output / 'adapter'}")


def _label(behaviour: str) -> str:
    return "refusal - over-refusal" if behaviour == "refusal" else "length reduction"


def search_trials(
    args: argparse.Namespace, model: Any, tokenizer: Any, vectors: Any, settings: Any
) -> dict[str, list[Any]]:
    """Every method's trials, each answered by the chosen backend; a Steer2Edit trial varies ``settings``."""
    from ..core.generation import generate_responses
    from ..evaluation.prompts import evaluation_prompts
    from ..evaluation.sweep import generation_measure, search

    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    prompts.borderline = []
    base_benign = generate_responses(
        model, tokenizer, prompts.benign, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    with ExitStack() as stack:
        answer = None
        if args.backend == "vllm":
            from ..export.vllm import VllmTrialAnswers

            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="steer2edit-sweep-"))
            heads = int(model_text_config(model).num_attention_heads)
            answer = VllmTrialAnswers(
                args.model, scratch, max_new_tokens=args.max_new_tokens, dtype=args.dtype, max_rank=heads
            )
        measure = generation_measure(
            args.behaviour,
            tokenizer,
            prompts,
            base_benign,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            answer=answer,
        )
        methods = ["Steer2Edit"] + (["steering"] if args.compare_steering else [])
        return {
            m: search(model, vectors, measure, method=m, trials=args.trials, seed=args.seed, settings=settings)
            for m in methods
        }


def write_trials(args: argparse.Namespace, trials: dict[str, list[Any]], folder: Path) -> None:
    """trials.json and the Pareto frontier's plot; the front printed."""
    from ..core.figures import save_figure
    from ..evaluation.plots import plot_frontiers
    from ..evaluation.sweep import pareto_front

    (folder / "trials.json").write_text(
        json.dumps({m: [asdict(t) for t in ts] for m, ts in trials.items()}, indent=2) + "\n"
    )
    label = _label(args.behaviour)
    fronts = {m: [(t.kl, t.attribute) for t in pareto_front(ts)] for m, ts in trials.items()}
    figure = plot_frontiers(fronts, "KL from base (nats/token)", label, f"{args.behaviour}: Pareto frontier")
    save_figure(figure, folder / "frontier.png")
    print(f"Pareto front of Steer2Edit ({label} vs KL):")
    for t in pareto_front(trials["Steer2Edit"]):
        print(f"  {label} {t.attribute:+.3f}  KL {t.kl:.4f}  {t.params}")
