"""`steer2edit edit`: solve an edit and save it as a PEFT adapter."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.settings import DEFAULTS, GATES
from .arguments import (
    add_command,
    add_model,
    add_output,
    add_reference,
    add_solver,
    add_vectors_or_probe,
    behaviour_named_by,
    extracted_vectors,
    load,
    load_utility,
    number,
    positive_number,
    settings_from,
)


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "edit",
        "solve an edit from steering vectors and save it as a PEFT adapter",
        "Solve a Steer2Edit edit from saved vectors (or from probe data on the fly), calibrated to a KL budget on the "
        "reference prompts (benign, borderline and framed), check that it is not degenerate, and save the adapter.",
    )
    add_model(parser)
    add_vectors_or_probe(parser, "probe data to extract from first (as for `extract`)", required=True)
    add_reference(parser)
    parser.add_argument(
        "--behaviour",
        default=None,
        help="name recorded in the adapter, which also picks the default keys (default: the probe name, or the "
        "behaviour the --vectors were extracted for)",
    )
    parser.add_argument("--heatmap", action="store_true", help="also write edit_heatmap.png into the adapter folder")
    add_output(parser, "the adapter")
    add_solver(parser)
    add_gates(parser)
    parser.set_defaults(run=run)


def fraction(text: str) -> float:
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def add_gates(parser: argparse.ArgumentParser) -> None:
    """Gates instead of heads (EditSettings.gate_amount and the fields after it; ``steer2edit_peft.GATES``)."""
    group = parser.add_argument_group(
        "gates (instead of heads: per layer one MLP neuron fitted to tell the probe's prompts from every reference "
        "token, silent below its threshold; not calibrated, so --max-kl and the rho's do not apply)"
    )
    group.add_argument(
        "--gates",
        type=positive_number,
        metavar="AMOUNT",
        default=None,
        help=f"edit with gates, each writing AMOUNT times its layer's steering vector at the probe's median prompt "
        f"(measured: {GATES.gate_amount:g})",
    )
    group.add_argument(
        "--gate-layers",
        type=fraction,
        nargs=2,
        metavar=("FIRST", "LAST"),
        default=DEFAULTS.gate_layers,
        help="the layers that get a gate, as shares of the depth (default: %(default)s)",
    )
    group.add_argument(
        "--gate-quantile",
        type=fraction,
        default=DEFAULTS.gate_quantile,
        help="share of the reference's tokens each gate stays silent on (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> None:
    from ..core.architectures import num_layers
    from ..core.files import check_output_folder
    from ..extraction import SteeringVectors
    from ..solver import check_sanity, edit_model
    from ..tuner.checkpoint import WEIGHTS_NAME
    from ..tuner.config_rules import CONFIG_NAME

    written = (CONFIG_NAME, WEIGHTS_NAME) + (("edit_heatmap.png",) if args.heatmap else ())
    check_output_folder(args.output, args.overwrite, written)
    # Saved vectors come first: they name the behaviour they were extracted for, which picks the default keys.
    saved = SteeringVectors.load(args.vectors) if args.vectors else None
    behaviour = args.behaviour or (saved.behaviour if saved else behaviour_named_by(args.probe))
    settings = settings_from(args, behaviour)
    model, tokenizer = load(args)
    settings.first_edited_layer(num_layers(model))  # a bad --first-layer is named before any data is read
    utility = load_utility(args.reference, model, tokenizer, args.batch_size)
    vectors = saved or extracted_vectors(args.probe, model, tokenizer, utility, args.batch_size, settings)
    peft_model = edit_model(
        model, vectors, settings, behaviour=behaviour, utility=utility, tokenizer=tokenizer, show_progress=True
    )
    report = peft_model.edit_reports["default"]
    calibration = getattr(peft_model, "calibrations", {}).get("default")
    if calibration is not None:
        print(calibration.summary())
    print(report.to_table(edited_only=True))
    check_sanity(peft_model, tokenizer, utility.prompts[:8])
    peft_model.save_pretrained(str(args.output), save_embedding_layers=False)  # each file whole, the config last
    if args.heatmap:
        from ..core.figures import save_figure
        from ..tuner.heatmap import plot_edit_heatmap

        save_figure(plot_edit_heatmap(report), args.output / "edit_heatmap.png")
    print(f"adapter saved to {args.output}")
