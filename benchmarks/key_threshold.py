"""Choose the selective keys' threshold (SELECTIVE_THRESHOLD) on tuning data only, never on the report sets.

python benchmarks/key_threshold.py [--thresholds 0 0.1 0.2 0.3] [--budget 0.015]   # results/key_threshold.json

default+public (selectivity.py) at one KL budget, for each threshold t, on sets no report figure uses: AdvBench
[0:100) (harmful; no probe holds it), the borderline tuning half (the shipped reference holds it, so it is
in-sample) and Alpaca [0:30) (plain benign). Greedy, 32 new tokens, the project's refusal matcher; no KL on the
report prompts. The rule: the smallest t whose borderline refusal is at most one prompt above the base model's
(harmful refusal falls as t grows, so the smallest such t keeps the most of it).
"""

from __future__ import annotations

import argparse
import sys
import time

import selectivity
from common import advbench_goals, alpaca_instructions, save_results

import steer2edit_peft.solver.scores as scores
from steer2edit_peft.probes.datasets import builtin_prompts

SHOWN = ("key_threshold", "harmful", "borderline", "benign", "scale", "kl_calibration", "heads")


class TuningSets(selectivity.Selectivity):
    heldout_measures = False

    def __init__(self) -> None:
        super().__init__()
        sets = {
            "harmful": advbench_goals()[:100],
            "borderline": builtin_prompts("borderline"),
            "benign": alpaca_instructions()[:30],
        }
        self.prompts = selectivity.JudgedPrompts(sets, ["tuning half"] * len(sets["borderline"]), [])


def chosen(base: dict[str, float], rows: list[dict[str, float]], borderline_prompts: int) -> float:
    """The rule of the module docstring; the largest t tried if none meets it."""
    allowed = base["borderline"] + 1 / borderline_prompts + 1e-9
    meeting = [row["key_threshold"] for row in rows if row["borderline"] <= allowed]
    return min(meeting) if meeting else max(row["key_threshold"] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3])
    parser.add_argument("--budget", type=float, default=0.015, help="KL budget of every row (default: 0.015)")
    args = parser.parse_args()
    run = TuningSets()
    base = run.measure(run.bench.model)
    print("base", {name: base[name] for name in selectivity.SETS}, flush=True)
    rows = []
    for threshold in sorted(args.thresholds):
        scores.SELECTIVE_THRESHOLD = threshold  # the solver reads it at each solve
        start = time.perf_counter()
        row = run.edit("default+public", args.budget)
        row = {"seconds": round(time.perf_counter() - start)} | {name: row[name] for name in SHOWN}
        print(row, flush=True)
        rows.append(row)
    pick = chosen(base, rows, len(run.sets["borderline"]))
    print(f"chosen threshold: {pick:g}", flush=True)
    save_results(
        "key_threshold",
        {
            "command": " ".join(["python", *sys.argv]),
            "sets": {name: len(prompts) for name, prompts in run.sets.items()},
            "budget": args.budget,
            "base": {name: base[name] for name in selectivity.SETS},
            "rows": rows,
            "chosen": pick,
        },
    )


if __name__ == "__main__":
    main()
