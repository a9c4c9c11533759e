"""Choose the key threshold on tuning data only: AdvBench [0:100) (harmful, no probe holds it), the borderline
tuning half (in the reference), Alpaca [0:30) (in the reference). Same code as the package (SELECTIVE_THRESHOLD patched)."""
import sys, time, json
sys.path.insert(0, "/work/main/benchmarks")
import selectivity as S
import steer2edit_peft.solver.scores as scores
from common import advbench_goals, alpaca_instructions
run = S.Selectivity()
border = json.load(open("/work/main/steer2edit_peft/probes/data/prompts/borderline.json"))
border = border["prompts"] if isinstance(border, dict) else border
run.sets = {"harmful": advbench_goals()[:100], "borderline": list(border), "benign": alpaca_instructions()[:30]}
run.borderline_kinds = ["tune"] * len(run.sets["borderline"])
base = run.measure(run.bench.model)
print("base", {k: v for k, v in base.items() if k not in ("borderline_refused_by_kind", "borderline_refused")}, flush=True)
for spec in sys.argv[1:]:
    t, budget = (float(x) for x in spec.split(":"))
    scores.SELECTIVE_THRESHOLD = t
    start = time.perf_counter()
    row = run.edit("default+public", budget)
    row = {k: v for k, v in row.items() if k not in ("borderline_refused_by_kind", "borderline_refused")}
    print("t", t, budget, round(time.perf_counter() - start), json.dumps(row), flush=True)
