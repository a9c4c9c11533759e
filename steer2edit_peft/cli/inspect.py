"""`steer2edit inspect`: what a saved adapter edits, from its files alone."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from .arguments import add_command, load_with_adapter, positive_int


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "inspect",
        "show which heads and neurons a saved adapter edits",
        "Print which heads and neurons a saved Steer2Edit adapter edits, from its files alone (no model is loaded).",
    )
    parser.add_argument("adapter", type=Path, help="folder written by save_pretrained")
    parser.add_argument("--top", type=positive_int, default=5, help="components listed per module")
    parser.add_argument("--heatmap", type=Path, help="write the edit heatmap here (.png, .svg or .pdf)")
    selectivity = parser.add_argument_group(
        "key selectivity",
        "load the model with the adapter and print, per edited module and head, how well its firing at the last "
        "prompt token tells the first prompt set from the second (AUROC; 1 = every prompt of the first fires harder)",
    )
    selectivity.add_argument(
        "--act-on", metavar="PROMPTS", help="prompts the edit should act on: a built-in set (harmful) or a file"
    )
    selectivity.add_argument(
        "--leave-alone", metavar="PROMPTS", help="prompts it should leave alone, e.g. borderline or a file"
    )
    selectivity.add_argument("--model", help="base model (default: the one the adapter records)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if (args.act_on is None) != (args.leave_alone is None):
        raise Steer2EditError("--act-on and --leave-alone go together: the selectivity of two prompt sets")
    print(inspect_adapter(args.adapter, args.top))
    if args.act_on is not None:
        from ..evaluation.selectivity import key_selectivity
        from ..probes.datasets import load_prompts

        act_on, leave_alone = load_prompts(args.act_on), load_prompts(args.leave_alone)
        model, tokenizer = load_with_adapter(args)
        print()
        print(key_selectivity(model, tokenizer, act_on, leave_alone).to_table())
    if args.heatmap:
        from ..core.figures import save_figure
        from ..tuner.heatmap import plot_edit_heatmap
        from ..tuner.report import EditReport

        print(f"wrote {save_figure(plot_edit_heatmap(EditReport.from_adapter_folder(args.adapter)), args.heatmap)}")


def inspect_adapter(folder: Path, top: int = 5) -> str:
    """A table of what a saved adapter edits, read from its files alone."""
    from ..tuner.report import EditReport, read_adapter_config

    config = read_adapter_config(folder)
    report = EditReport.from_adapter_folder(folder)
    lines = [
        f"Steer2Edit adapter at {folder}",
        f"  behaviour: {config.get('behaviour')}   base model: {config.get('base_model_name_or_path')}",
        f"  rho_attn={config.get('rho_attn')} rho_mlp={config.get('rho_mlp')} alpha={config.get('alpha')} "
        f"strength={config.get('strength')} head_dim={config.get('head_dim')} "
        f"keys={config.get('key_direction')} layers={config.get('layers_to_transform') or 'all'}",
        f"  probe data: {config.get('probe_data')}",
        "",
        report.to_table(top=top),
    ]
    return "\n".join(lines)
