"""`steer2edit demo`: the main job, an end-to-end edit of the embedded model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from ..core.settings import EVALUATED_BEHAVIOURS
from .arguments import add_command, add_eval, add_model, add_solver, settings_from, steering_strength


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "demo",
        "edit the embedded model end to end and show what changed",
        "Probe the model with its own responses, solve the strongest edit within a KL budget, compare base vs "
        "activation steering of every layer (at the KL the edit costs) vs the edit unmerged and merged on held-out "
        "prompts, save and reload the adapter, and write a results table, an edit heatmap and a metrics chart.",
    )
    add_model(parser)
    parser.set_defaults(batch_size=96)  # every held-out prompt of a condition in one batch (see DemoSettings)
    parser.add_argument("--behaviour", choices=EVALUATED_BEHAVIOURS, default="refusal")
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"), help="folder for adapter, plots, results")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that holds files of anything but a demo (the demo's own files are replaced)",
    )
    parser.add_argument(
        "--probe", default=None, help="probe data instead of the model's own: a .jsonl/.json/.csv file or Hub dataset"
    )
    parser.add_argument(
        "--steering-strength", type=steering_strength, default=None, help="fixed strength instead of matched KL"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the images")
    add_solver(parser)
    add_eval(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder
    from ..demo import DemoSettings, run_demo
    from ..probes.datasets import load_probe

    if args.backend != "transformers":
        raise Steer2EditError("the demo generates with transformers; use `steer2edit eval --backend vllm` for vLLM")
    check_output_folder(args.output, args.overwrite or _holds_only_a_demo_run(args.output))
    settings = DemoSettings(
        model=args.model,
        behaviour=args.behaviour,
        output=args.output,
        edit=settings_from(args, args.behaviour),
        steering_strength=args.steering_strength,
        num_eval=args.num_eval,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        plots=not args.no_plots,
        probe=load_probe(args.probe) if args.probe else None,
    )
    outcome = run_demo(settings)
    print("\n" + outcome.table)
    print(
        f"\n{outcome.calibration}"
        f"\nactivation steering of every layer at strength {outcome.steering_strength:.3f} (same vectors, same KL)"
        f"\nreloaded adapter: max |logit diff| {outcome.reload_max_abs_diff:.2e}, same greedy answers: "
        f"{outcome.reload_same_answers}; merged: max |logit diff| {outcome.merge_max_abs_diff:.2e}"
        f"\ntime (s): {json.dumps(outcome.seconds)}, total {sum(outcome.seconds.values()):.1f}"
    )
    for path in outcome.files:
        print(f"wrote {path}")


def _holds_only_a_demo_run(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but an earlier demo's files, which a new demo run may replace."""
    import fnmatch

    own = ("adapter", "figures", "results.json", "utility.jsonl", "reference-*.jsonl", "probe-*.jsonl")
    if not (folder / "results.json").is_file():
        return False
    if not all(any(fnmatch.fnmatch(entry.name, pattern) for pattern in own) for entry in folder.iterdir()):
        return False
    try:
        summary = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(summary, dict) and {"settings", "calibration", "results"} <= set(summary)
