"""`steer2edit extract`: steering vectors from probe data."""

from __future__ import annotations

import argparse
from typing import Any

from .arguments import (
    add_command,
    add_model,
    add_output,
    add_positions,
    add_reference,
    behaviour_named_by,
    load,
    load_probe_data,
    load_utility,
)


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "extract",
        "extract steering vectors from probe data",
        "Run the probe data through the model and save per-module steering vectors (safetensors + JSON), with the "
        "mean inputs on the reference prompts (the model's own answers to safe requests) for contrastive keys.",
    )
    add_model(parser)
    parser.add_argument("--probe", default="refusal", help="built-in behaviour, .jsonl/.json/.csv file, or Hub dataset")
    parser.add_argument("--split", default="train", help="split of a Hub dataset")
    parser.add_argument("--system-prompt", default=None)
    add_reference(parser)
    add_positions(parser, outputs=True)
    add_output(parser, "the vectors")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder
    from ..extraction.extract import extract_steering_vectors
    from ..extraction.vectors import METADATA_FILE, VECTORS_FILE

    check_output_folder(args.output, args.overwrite, (VECTORS_FILE, METADATA_FILE))
    model, tokenizer = load(args)
    probe = load_probe_data(args.probe, model, tokenizer, args.batch_size, args.split)
    utility = load_utility(args.reference, model, tokenizer, args.batch_size)
    vectors = extract_steering_vectors(
        model,
        tokenizer,
        probe,
        batch_size=args.batch_size,
        system_prompt=args.system_prompt,
        reference=(utility.prompts, utility.responses),
        positions=args.positions,
        input_positions=args.input_positions,
    )
    behaviour = behaviour_named_by(args.probe)
    if behaviour is not None:  # `edit --vectors` reads it to pick the behaviour's default keys
        vectors.options["behaviour"] = behaviour
    vectors.save(args.output, overwrite=args.overwrite)
    print(f"{len(vectors.modules)} module vectors from {probe} -> {args.output}")
