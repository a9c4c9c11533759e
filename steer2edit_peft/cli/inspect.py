"""`steer2edit inspect`: what a saved adapter edits, from its files alone; and, asked, how selective its keys are."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .arguments import add_command, load_with_adapter, positive_int

# Prompt sets no edit is probed or tuned on: the held-out harmful requests, and the report half of the borderline set.
HELD_OUT = {
    "heldout-harmful": "held-out harmful requests (never probed)",
    "heldout-borderline": "borderline report half (safe requests that sound risky; no edit is tuned on them)",
}


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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --heatmap file")
    selectivity = parser.add_argument_group(
        "key selectivity",
        "load the model with the adapter and print, per edited module and head, how well its firing at the last "
        "prompt token tells the first prompt set from the second (AUROC; 1 = every prompt of the first fires harder). "
        "By default both sets are held out: prompts the shipped probe and reference data never contain, so the "
        "AUROC is out of sample; a set the edit was made from (harmful, borderline) gives an in-sample figure.",
    )
    selectivity.add_argument("--selectivity", action="store_true", help="measure it on the held-out sets")
    selectivity.add_argument(
        "--act-on",
        metavar="PROMPTS",
        help="prompts the edit should act on: a built-in set or a file (default: heldout-harmful)",
    )
    selectivity.add_argument(
        "--leave-alone",
        metavar="PROMPTS",
        help="prompts it should leave alone: a built-in set or a file (default: heldout-borderline)",
    )
    selectivity.add_argument("--model", help="base model (default: the one the adapter records)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.figures import check_image_path

    if args.heatmap:
        check_image_path(args.heatmap, args.overwrite)  # before anything is printed or loaded
    measure = args.selectivity or args.act_on is not None or args.leave_alone is not None
    if measure:  # prompt files are read, and refused, before the model loads
        act_on = prompt_set(args.act_on or "heldout-harmful")
        leave_alone = prompt_set(args.leave_alone or "heldout-borderline")
    print(inspect_adapter(args.adapter, args.top))
    if measure:
        from ..evaluation.selectivity import edited_key_layers, gate_selectivity, gate_table, key_selectivity

        print(
            f"\nact on: {act_on[0]} ({len(act_on[1])} prompts); leave alone: {leave_alone[0]} ({len(leave_alone[1])})"
        )
        model, tokenizer = load_with_adapter(args)
        if model.peft_config["default"].gates:
            gates = gate_selectivity(model, tokenizer, act_on[1], leave_alone[1], show_progress=True)
            print(gate_table(gates, len(act_on[1]), len(leave_alone[1])))
        if any(edited_key_layers(model, "default")):
            print(key_selectivity(model, tokenizer, act_on[1], leave_alone[1], show_progress=True).to_table())
    if args.heatmap:
        from ..core.figures import save_figure
        from ..tuner.heatmap import plot_edit_heatmap
        from ..tuner.report import EditReport

        figure = plot_edit_heatmap(EditReport.from_adapter_folder(args.adapter))
        print(f"wrote {save_figure(figure, args.heatmap, args.overwrite)}")


def prompt_set(spec: str) -> tuple[str, list[str]]:
    """(what it is, the prompts) of a held-out set, a built-in prompt set or a prompt file."""
    from ..core.errors import DataError
    from ..evaluation.prompts import borderline_prompts, builtin_heldout
    from ..probes.datasets import load_prompts

    if spec == "heldout-harmful":
        return HELD_OUT[spec], builtin_heldout("refusal")["harmful"]
    if spec == "heldout-borderline":
        return HELD_OUT[spec], borderline_prompts()
    prompts = load_prompts(spec)
    if not prompts:
        raise DataError(f"{spec} holds no prompts")
    described = f"{spec} (built in: probe or reference data, so in sample for the shipped edits)"
    return (spec if Path(spec).is_file() else described), prompts


def inspect_adapter(folder: Path, top: int = 5) -> str:
    """A table of what a saved adapter edits, read from its files alone."""
    from ..tuner.report import EditReport, read_adapter_config

    config = read_adapter_config(folder)
    report = EditReport.from_adapter_folder(folder)
    solver = (
        f"gates (repurposed MLP neurons) strength={config.get('strength')}"
        if config.get("gates")
        else f"rho_attn={config.get('rho_attn')} rho_mlp={config.get('rho_mlp')} alpha={config.get('alpha')} "
        f"strength={config.get('strength')} head_dim={config.get('head_dim')} keys={config.get('key_direction')}"
    )
    lines = [
        f"Steer2Edit adapter at {folder}",
        f"  behaviour: {config.get('behaviour')}   base model: {config.get('base_model_name_or_path')}",
        f"  {solver} layers={config.get('layers_to_transform') or 'all'}",
        f"  probe data: {config.get('probe_data')}",
        "",
        report.to_table(top=top),
    ]
    return "\n".join(lines)
