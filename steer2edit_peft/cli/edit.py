"""`steer2edit edit`: solve an edit and save it as a PEFT adapter."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .arguments import (
    add_command,
    add_model,
    add_output,
    add_reference,
    add_solver,
    extracted_vectors,
    load,
    load_utility,
    settings_from,
)


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "edit",
        "solve an edit from steering vectors and save it as a PEFT adapter",
        "Solve a Steer2Edit edit from saved vectors (or from probe data on the fly), calibrated to a KL budget on the "
        "reference prompts (benign and borderline), check that it is not degenerate, and save the adapter.",
    )
    add_model(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", type=Path, help="folder written by `steer2edit extract`")
    source.add_argument("--probe", help="probe data to extract from first (as for `extract`)")
    add_reference(parser)
    parser.add_argument(
        "--behaviour",
        default=None,
        help="name recorded in the adapter, which also picks the default keys (default: the probe name)",
    )
    parser.add_argument("--heatmap", action="store_true", help="also write edit_heatmap.png into the adapter folder")
    add_output(parser, "the adapter")
    add_solver(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import atomic_folder, check_output_folder
    from ..solver import check_sanity, edit_model

    check_output_folder(args.output, args.overwrite)
    behaviour = args.behaviour or (args.probe if args.probe and not Path(args.probe).is_file() else None)
    settings = settings_from(args, behaviour)
    model, tokenizer = load(args)
    utility = load_utility(args.reference, model, tokenizer, args.batch_size)
    vectors = load_vectors(args, model, tokenizer, utility, settings)
    peft_model = edit_model(model, vectors, settings, behaviour=behaviour, utility=utility, tokenizer=tokenizer)
    report = peft_model.edit_reports["default"]
    calibration = getattr(peft_model, "calibrations", {}).get("default")
    if calibration is not None:
        print(calibration.summary())
    print(report.to_table(edited_only=True))
    check_sanity(peft_model, tokenizer, utility.prompts[:8])
    with atomic_folder(args.output) as staging:
        peft_model.save_pretrained(str(staging), save_embedding_layers=False)
        if args.heatmap:
            from ..core.figures import save_figure
            from ..tuner.heatmap import plot_edit_heatmap

            save_figure(plot_edit_heatmap(report), staging / "edit_heatmap.png")
    print(f"adapter saved to {args.output}")


def load_vectors(args: argparse.Namespace, model: Any, tokenizer: Any, utility: Any, settings: Any) -> Any:
    """The saved vectors of --vectors, or vectors extracted from --probe on the fly (with the reference inputs)."""
    from ..extraction import SteeringVectors

    if args.vectors:
        return SteeringVectors.load(args.vectors)
    return extracted_vectors(args.probe, model, tokenizer, utility, args.batch_size, settings)
