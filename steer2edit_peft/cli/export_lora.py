"""`steer2edit export-lora`: the edit as an exactly equal LoRA adapter."""

from __future__ import annotations

import argparse
from typing import Any

from .arguments import add_adapter_source, add_command, add_output, load_with_adapter, positive_int


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "export-lora",
        "write the edit as a standard LoRA adapter (exact)",
        "Write a PEFT LoRA adapter whose outputs equal the Steer2Edit adapter's (to float32 rounding); it loads "
        "with plain PEFT, in multi-LoRA stacks, and in LoRA servers such as vLLM.",
    )
    add_adapter_source(parser)
    parser.add_argument("--rank", type=positive_int, default=None, help="pad every module to this rank")
    parser.add_argument("--vllm", action="store_true", help="pad to the smallest rank vLLM serves (1, 8, 16, ...)")
    add_output(parser, "the LoRA adapter")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder
    from ..export import edit_terms, to_lora
    from ..export.lora import LORA_FILES

    check_output_folder(args.output, args.overwrite, LORA_FILES)
    model, _ = load_with_adapter(args)
    rank = args.rank
    if args.vllm:
        from ..export.vllm import vllm_rank

        rank = vllm_rank(max(rank or 1, edit_terms(model)))
    config, _ = to_lora(model, output=args.output, rank=rank, overwrite=args.overwrite)
    print(f"LoRA adapter (r={config.r}, {len(config.target_modules or [])} modules) written to {args.output}")
