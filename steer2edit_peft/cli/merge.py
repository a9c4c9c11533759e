"""`steer2edit merge`: a plain transformers model with the edit in its weights."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.settings import DTYPE_NAMES
from .arguments import add_adapter_source, add_command, add_output, load_with_adapter


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "merge",
        "write a model with the edit merged into its weights",
        "Load the base model, apply the adapter, merge it and save a plain transformers model (safetensors).",
    )
    add_adapter_source(parser)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="dtype of the merged weights, as the model loads everywhere else: auto is bfloat16 where the hardware "
        "computes in it natively, else float32 (default: auto)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="safetensors shard size")
    add_output(parser, "the merged model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder, staged

    check_output_folder(args.output, args.overwrite)
    model, tokenizer = load_with_adapter(args, args.dtype)
    merged = model.merge_and_unload()
    with staged(args.output, args.overwrite) as staging:  # config.json, moved in last, marks the folder complete
        merged.save_pretrained(staging, max_shard_size=args.max_shard_size)
        tokenizer.save_pretrained(staging)
    print(f"merged model written to {args.output} (load it with AutoModelForCausalLM.from_pretrained)")
