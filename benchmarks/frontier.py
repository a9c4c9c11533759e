"""Budget-calibrated Steer2Edit vs the strongest activation steering, at matched KL, on held-out public data.

python benchmarks/frontier.py [--tasks refusal truthful concise] [--budgets 0.01 0.02 0.05 0.1]

Both methods use the same steering vectors (the model's own responses: the shipped probe files), the same utility
data for matching (the model's own answers to the project's benign prompts), and are compared at each KL budget:
Steer2Edit calibrated to the budget (`edit_model(max_kl=...)`, the demo's defaults), activation steering at the
strength whose KL matches the budget, on every layer (the paper's baseline) and on the layers the edit may touch;
the better steering row at each budget is the one to beat. KL is reported again on held-out Alpaca prompts.

  refusal   AdvBench [300:330) (refusal, the project's matcher and the reference code's) and Alpaca [50:80)
            (over-refusal).
  truthful  TruthfulQA MC [400:480): MC1, MC2 and the reference code's best-vs-first-incorrect (teacher-forced).
  concise   GSM8K test [0:20): mean answer length (tokens) and exact final-answer accuracy (128 new tokens), so
            an empty answer cannot score as concise; and 30 one-step sums and products (64 new tokens): length and
            exact-answer accuracy, since a 135M model solves almost no GSM8K problem.
Writes benchmarks/results/frontier.json and frontier_<task>.png (`--plot-only` redraws them from the JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from typing import Any

from common import RESULTS, SHARED, advbench_goals, alpaca_instructions, save_results

from steer2edit_peft.core.generation import generate_responses
from steer2edit_peft.core.judges import ReferenceRefusalMatcher, RefusalMatcher
from steer2edit_peft.core.likelihood import KLMeter
from steer2edit_peft.core.models import load_model
from steer2edit_peft.demo import DemoSettings, demo_probe, demo_utility, match_steering_strength
from steer2edit_peft.evaluation import truthfulqa_mc
from steer2edit_peft.evaluation.suite import combined
from steer2edit_peft.extraction.extract import extract_steering_vectors
from steer2edit_peft.extraction.steering import steer
from steer2edit_peft.solver.calibrate import BudgetError, kl_meter
from steer2edit_peft.solver.edit import edit_model
from steer2edit_peft.solver.settings import default_first_layer, edit_config_from
from steer2edit_peft.tuner.report import layer_index


def gsm8k(count: int, split: str = "test") -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (SHARED / "gsm8k" / f"{split}.jsonl").read_text().splitlines()[:count]]
    return [(row["question"], row["answer"].split("####")[-1].strip().replace(",", "")) for row in rows]


def arithmetic(count: int) -> list[tuple[str, str]]:
    """Questions with one short exact answer that a 135M model can get right (GSM8K is beyond it)."""
    rng = random.Random(0)
    problems = []
    for index in range(count):
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        if index % 2:
            problems.append((f"What is {a} times {b}?", str(a * b)))
        else:
            problems.append((f"What is {a} plus {b}?", str(a + b)))
    return problems


def final_number(text: str) -> str | None:
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return numbers[-1].replace(",", "").rstrip(".") if numbers else None


class Bench:
    def __init__(self, batch_size: int) -> None:
        self.model, self.tokenizer = load_model()
        self.batch = batch_size
        output = DemoSettings().output
        self.utility = demo_utility(self.model, self.tokenizer, output, batch_size)
        self.meter = kl_meter(self.model, self.tokenizer, self.utility, batch_size=32)
        self.benign = alpaca_instructions()[50:80]
        self.base_benign = self.generate(self.model, self.benign, 32)
        self.heldout_meter = KLMeter(self.model, self.tokenizer, self.benign, self.base_benign, batch_size=32)

    def generate(self, model: Any, prompts: list[str], tokens: int) -> list[str]:
        return generate_responses(
            model, self.tokenizer, prompts, max_new_tokens=tokens, batch_size=self.batch, show_progress=False
        )

    def measure(self, task: str, model: Any) -> dict[str, float]:
        if task == "refusal":
            harmful = advbench_goals()[300:330]
            answers, benign = self.generate(model, harmful, 32), self.generate(model, self.benign, 32)
            project, reference = RefusalMatcher(), ReferenceRefusalMatcher()
            return {
                "refusal": sum(map(project, harmful, answers)) / len(harmful),
                "over_refusal": sum(map(project, self.benign, benign)) / len(benign),
                "refusal_reference_matcher": sum(map(reference, harmful, answers)) / len(harmful),
                "over_refusal_reference_matcher": sum(map(reference, self.benign, benign)) / len(benign),
            }
        if task == "truthful":
            scores = truthfulqa_mc(
                model, self.tokenizer, SHARED / "truthfulqa" / "mc_task.json", questions=range(400, 480), batch_size=32
            )
            return {k: scores[k] for k in ("mc1", "mc2", "best_vs_first_incorrect")}
        scores = {}
        for name, problems, tokens in (("", gsm8k(20), 128), ("arithmetic_", arithmetic(30), 64)):
            answers = self.generate(model, [q for q, _ in problems], tokens)
            lengths = [len(self.tokenizer(a, add_special_tokens=False).input_ids) for a in answers]
            correct = [final_number(a) == gold for a, (_, gold) in zip(answers, problems)]
            scores[f"{name}mean_length"] = sum(lengths) / len(lengths)
            scores[f"{name}accuracy"] = sum(correct) / len(correct)
        return scores

    def run(self, task: str, budgets: list[float]) -> dict[str, Any]:
        probe = demo_probe(self.model, self.tokenizer, task, DemoSettings().output, self.batch)
        vectors = extract_steering_vectors(
            self.model,
            self.tokenizer,
            probe,
            batch_size=16,
            reference=(self.utility.prompts, self.utility.responses),
            input_positions="decision",
            show_progress=False,
        )
        layers = self.model.config.num_hidden_layers
        first = default_first_layer(layers)
        rows: list[dict[str, Any]] = [
            {"method": "base", "budget": 0.0, "kl_heldout": 0.0, **self.measure(task, self.model)}
        ]
        for budget in budgets:
            start = time.time()
            config = edit_config_from(
                {"rho_attn": 0.3, "rho_mlp": None, "alpha": 0.6, "first_layer": first, "key_direction": "contrast"},
                layers,
            )
            try:
                edited = edit_model(
                    self.model,
                    vectors,
                    config,
                    max_kl=budget,
                    utility=self.utility,
                    tokenizer=self.tokenizer,
                    max_head_share=0.2,
                    kl_meter=self.meter,
                )
            except BudgetError as error:
                rows.append({"method": "Steer2Edit", "budget": budget, "error": str(error)})
                continue
            calibration = edited.calibrations["default"]
            rows.append(
                {
                    "method": "Steer2Edit",
                    "budget": budget,
                    "kl_calibration": calibration.kl,
                    "kl_heldout": self.heldout_meter(edited),
                    "heads": calibration.edited_heads,
                    **self.measure(task, edited),
                }
            )
            edited.unload()
            upper = [m for m in vectors.modules if (layer_index(m) or 0) >= first]
            for name, modules in (("steering, all layers", None), (f"steering, layers {first}+", upper)):
                strength = match_steering_strength(self.model, vectors, self.meter, budget, modules=modules)
                steered = combined(lambda s=strength, m=modules: steer(self.model, vectors, s, m))
                with steered():
                    row = {"method": name, "budget": budget, "strength": strength, **self.measure(task, self.model)}
                row["kl_heldout"] = self.heldout_meter(self.model, steered)
                rows.append(row)
            print(f"{task} KL<={budget}: {time.time() - start:.0f}s", flush=True)
            for row in rows[-3:]:
                print("  ", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        return {"probe": probe.description, "rows": rows}


# The figure of each task: (metric, axis label); x is the KL on held-out Alpaca prompts, the utility measure that
# neither method was calibrated on.
FIGURES = {
    "refusal": ("refusal", "refusal rate, AdvBench [300:330)"),
    "truthful": ("best_vs_first_incorrect", "TruthfulQA [400:480): best answer over first incorrect"),
    "concise": ("mean_length", "GSM8K [0:20) answer length (tokens)"),
}


def plot(task: str, rows: list[dict[str, Any]]) -> None:
    from steer2edit_peft.core.figures import save_figure
    from steer2edit_peft.evaluation.plots import plot_frontiers

    metric, label = FIGURES[task]
    base = next(r for r in rows if r["method"] == "base")
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["method"] != "base" and metric in row:
            curves.setdefault(row["method"], [(0.0, base[metric])]).append((row["kl_heldout"], row[metric]))
    title = f"{task}: each method calibrated to KL budgets 0.01-0.05 on the utility data"
    save_figure(
        plot_frontiers(curves, "KL from base on held-out Alpaca [50:80)", label, title),
        RESULTS / f"frontier_{task}.png",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["refusal", "truthful", "concise"])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from frontier.json")
    args = parser.parse_args()
    if args.plot_only:
        for task, entry in json.loads((RESULTS / "frontier.json").read_text()).items():
            if task in FIGURES:
                plot(task, entry["rows"])
        return
    bench = Bench(args.batch_size)
    command = f"python benchmarks/frontier.py --tasks TASK --budgets {' '.join(map(str, args.budgets))}"
    saved = RESULTS / "frontier.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    results.pop("command", None)  # written per task since tasks are rerun one at a time
    for task in args.tasks:
        started = time.time()
        results[task] = {"command": command.replace("TASK", task), **bench.run(task, args.budgets)}
        results[task]["seconds"] = round(time.time() - started)
        results.pop("machine", None)
        save_results("frontier", results)  # after every task (the others' results kept), so a long run keeps all
        plot(task, results[task]["rows"])


if __name__ == "__main__":
    main()
