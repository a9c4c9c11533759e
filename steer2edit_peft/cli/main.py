"""The `steer2edit` command: a table of subcommands, each in its own module."""

from __future__ import annotations

import argparse
import sys

from ..core.errors import Steer2EditError
from ..version import __version__
from . import demo, edit, evaluate, export_gguf, export_lora, extract, inspect, merge, probe, push, sweep
from .arguments import Parser, did_you_mean

EPILOG = """\
examples:
  steer2edit demo                                   # edit the embedded SmolLM2 to refuse harmful requests
  steer2edit demo --behaviour concise               # or to answer briefly
  steer2edit probe --behaviour refusal --output outputs/probe.jsonl
  steer2edit probe --system-prompt "Always answer in French." --prompts my_prompts.json --output outputs/fr.jsonl
  steer2edit extract --probe outputs/probe.jsonl --output outputs/vectors
  steer2edit edit --vectors outputs/vectors --max-kl 0.05 --output outputs/refusal-edit
  steer2edit eval --adapter outputs/refusal-edit --vectors outputs/vectors --steering-strength 0.2
  steer2edit sweep --max-kl 0.05 --trials 20 --compare-steering --output outputs/sweep
  steer2edit inspect outputs/refusal-edit --heatmap outputs/refusal-edit/heatmap.png
  steer2edit push outputs/refusal-edit your-name/smollm2-refusal-edit
  steer2edit export-lora outputs/refusal-edit --output outputs/refusal-lora --rank 8
  steer2edit export-gguf outputs/refusal-edit --output outputs/refusal-gguf --merged
  steer2edit merge outputs/refusal-edit --output outputs/refusal-merged
  steer2edit lm-eval run --model hf --model_args pretrained=MODEL,peft=outputs/refusal-edit --tasks TASKS

MODEL is the embedded SmolLM2-135M-Instruct by default, or any transformers model id, folder or .gguf file.
A command refuses to replace files of the names it writes unless --overwrite is given; other files in its output
folder are never touched, and each file is written whole. -v shows other libraries' messages and progress bars.
"""

COMMANDS = (demo, probe, extract, edit, evaluate, sweep, inspect, push, export_lora, export_gguf, merge)


def build_parser() -> Parser:
    parser = Parser(
        prog="steer2edit",
        description="Turn activation-steering vectors into sparse rank-1 weight edits, shipped as PEFT adapters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"steer2edit-peft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.register(commands)
    commands.add_parser(  # handed to lm-eval whole (see main): its --help is lm-eval's own
        "lm-eval",
        help="lm-evaluation-harness's command line, with Steer2Edit adapters loadable as peft=ADAPTER",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..core.quiet import quiet_warnings

    quiet_warnings()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:
        from .lm_eval import run_harness

        try:
            return run_harness(argv[1:])
        except Steer2EditError as error:
            print(f"steer2edit: error: {error}", file=sys.stderr)
            return 2
    parser = build_parser()
    refuse_mistyped(parser, argv)
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        args.run(args)
    except (Steer2EditError, ValueError, FileNotFoundError, OSError) as error:
        print(f"steer2edit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steer2edit: interrupted; no output was written, earlier files are as they were", file=sys.stderr)
        return 130
    return 0


def refuse_mistyped(parser: Parser, argv: list[str]) -> None:
    """A mistyped command or option gets its closest match, from the command's own parser, before anything runs (and
    before argparse reports a missing required option instead of the typo)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    first = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if first is None:
        return
    name = argv[first]
    if name not in commands:
        parser.error(f"unknown command {name!r}" + did_you_mean(name, list(commands)))
    commands[name].refuse_unknown_option(argv[first + 1 :])


def quiet_libraries() -> None:
    """Other libraries' notices and progress bars off (a command's own bars stay): -v keeps them."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
