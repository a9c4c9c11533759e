"""Selectivity: refusal gained on harmful requests against refusal added on safe requests that sound risky, on
report sets no probe or tuning touched, for the default edit and its peers, each on its own frontier.

python benchmarks/selectivity.py [--budgets 0.01 0.02 0.05 0.1]   # results/selectivity.json, selectivity.png
python benchmarks/selectivity.py --plot-only                      # redraw the figure from the JSON
python benchmarks/selectivity.py --rejudge --name NAME             # rates again from the saved answers
python benchmarks/selectivity.py --wrapped --budgets 0.02          # results/selectivity-wrapped.json: plain and
                                                                   # each jailbreak form side by side

Report sets: HarmBench standard behaviours, report half of the fixed split (`harmbench_behaviours(..., "report")`;
contextual ones are left out here to keep the run short), the project's borderline report half (120 prompts of
six kinds that no edit is tuned on), Alpaca [50:80) (plain benign). KL on those Alpaca prompts, against the base
model's own answers, and the shares of Alpaca and borderline answers whose meaning changed from the base model's
(`evaluation.metrics.changed_share`). Greedy, 32 new tokens, the project's refusal matcher; every row keeps its
answers, so that another judge can read them again (--rejudge). With --wrapped, the harmful and
borderline report prompts are also asked inside each of the project's jailbreak framings
(`evaluation.wrappers.JAILBREAK_FORMS`: fiction, prefix injection, research pretext, format constraint, role-play),
which no probe or reference prompt is wrapped in.

Methods, every one at each KL budget (strength or scale found by the same bisection, `largest_within`):
  steering          activation steering of every layer's attention and MLP outputs (the paper's baseline)
  rank-one          W <- W + a v_hat v_hat^T W on every matrix that writes to the residual stream (peers.py)
  paper             Steer2Edit with the paper's settings (keys normalize(W^T v), every layer, heads and neurons)
  contrast          the previous default: contrast keys silent on benign + borderline (tuning half), heads by g
  default           DEFAULTS: selective keys and heads, from the shipped (project-written) probe and reference,
                    framed prompts among them (probes.framings: framings other than the report's)
  default+public    DEFAULTS with public tuning data added: the model's own answers to the HarmBench tune half
                    (probe) and to GSM8K train [0:200), TruthfulQA [0:200) and Alpaca [0:50)+[80:100) (reference)
  public-sparse     default+public with at most 5% of the edited layers' heads (--max-head-share 0.05)
  gates             one repurposed MLP neuron per layer, gated by a detector fitted on the shipped probe and reference
                    (gates.py, its variant and amount chosen there on tuning data); not searched to the budget
  alphasteer        AlphaSteer in rank one (gates.py): per layer 12-24 a key regressed on the probe prompts' MLP
                    inputs inside the null space of the reference's, adding lambda (key . input) times the layer's
                    steering direction to the MLP output (hooks); the null-space share 0.001 of gates.py's tuning
Steering, rank-one and paper are matched on the benign utility data; the others on their own reference.
The public tuning data's sampled answers are cached in outputs/selectivity-cache (not shipped).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from common import RESULTS, SHARED, alpaca_instructions, save_results
from frontier import Bench
from peers import rank_one_injection

from steer2edit_peft.core.judges import RefusalMatcher
from steer2edit_peft.core.likelihood import KLMeter
from steer2edit_peft.core.settings import DEFAULTS, PAPER
from steer2edit_peft.demo import DemoSettings, demo_probe
from steer2edit_peft.evaluation.metrics import changed_share
from steer2edit_peft.evaluation.prompts import builtin_heldout, harmbench_behaviours
from steer2edit_peft.evaluation.wrappers import JAILBREAK_FORMS, wrap
from steer2edit_peft.extraction.extract import extract_steering_vectors
from steer2edit_peft.extraction.steering import steer
from steer2edit_peft.probes.datasets import ContrastiveDataset
from steer2edit_peft.probes.generate import generate_probe, reference_data
from steer2edit_peft.solver import scores
from steer2edit_peft.solver.calibrate import BudgetError, kl_meter, largest_within
from steer2edit_peft.solver.edit import edit_model

SETS = ("harmful", "borderline", "benign")
CHANGED = ("benign", "borderline")  # the sets whose answers must keep their meaning (evaluation.metrics.changed_share)
WRAPPED = ("harmful", "borderline")  # the sets asked inside each jailbreak form with --wrapped
CACHE = RESULTS.parents[1] / "outputs" / "selectivity-cache"
PUBLIC = "public"  # the reference key of the default with public tuning data
PLAIN = ("benign", "borderline")  # the reference before it held framed prompts (the contrast row's)
ALPHASTEER = (12, 24, 0.001)  # first and last layer, null-space share: gates.py's better one on the tuning sets
HARMBENCH = SHARED / "harmbench" / "harmbench_behaviors_text_all.csv"


def public_benign_files() -> list[str]:
    """The public benign tuning prompts, one JSON file per source (reference_data reads prompt files)."""
    from common import alpaca_instructions
    from frontier import gsm8k

    with open(SHARED / "truthfulqa" / "TruthfulQA.csv", newline="", encoding="utf-8") as handle:
        truthful = [row["Question"] for row in csv.DictReader(handle)][:200]
    alpaca = alpaca_instructions()
    sources = {
        "gsm8k-train": [q for q, _ in gsm8k(200, split="train")],
        "truthfulqa": truthful,
        "alpaca-tune": alpaca[:50] + alpaca[80:],  # [50:80) is the report set
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, prompts in sources.items():
        (CACHE / f"{name}.json").write_text(json.dumps(prompts))
    return [str(CACHE / f"{name}.json") for name in sources]


class JudgedPrompts:
    """Prompt sets (with ``forms``, the WRAPPED ones also in each jailbreak form) and the refusal rates of answers
    to them; ``borderline_kinds``: the kind of each borderline prompt."""

    def __init__(self, sets: dict[str, list[str]], borderline_kinds: list[str], forms: list[str]) -> None:
        self.sets, self.borderline_kinds, self.forms = sets, borderline_kinds, forms
        wrapped_sets = {f"{name}/{form}": wrap(sets[name], form) for name in WRAPPED for form in forms}
        self.asked = sets | wrapped_sets
        self.judge = RefusalMatcher()

    def judged(self, answered: dict[str, list[str]]) -> dict[str, Any]:
        """Each set's refusal rate, the wrapped forms' mean, and which borderline prompts were refused."""
        sets = self.asked
        refused = {name: [self.judge(p, a) for p, a in zip(sets[name], answered[name])] for name in sets}
        rates: dict[str, Any] = {name: sum(refused[name]) / len(refused[name]) for name in sets}
        for name in WRAPPED if self.forms else ():  # the mean over the forms, each form weighing the same
            rates[f"{name}/wrapped"] = sum(rates[f"{name}/{form}"] for form in self.forms) / len(self.forms)
        by_kind = Counter(kind for kind, no in zip(self.borderline_kinds, refused["borderline"]) if no)
        rates["borderline_refused_by_kind"] = {kind: by_kind[kind] for kind in dict.fromkeys(self.borderline_kinds)}
        rates["borderline_refused"] = [number for number, no in enumerate(refused["borderline"]) if no]
        return rates


def report_prompts(wrapped: bool, imperative: bool = True) -> JudgedPrompts:
    """The report sets; with ``wrapped``, in each of the project's jailbreak forms too; with ``imperative``, the
    borderline report half's imperative requests ("Write ...", "Give detailed instructions ...") as a set of their
    own, since its 120 prompts are questions and HarmBench's behaviours orders (results from before have none)."""
    borderline = builtin_heldout("borderline")  # the report half, with the kind of each prompt
    sets = {
        "harmful": harmbench_behaviours(HARMBENCH, "report", kinds=("standard",)),
        "borderline": borderline["prompts"],
        **({"imperative": borderline["imperative"]} if imperative else {}),
        "benign": alpaca_instructions()[50:80],  # the Bench's held-out benign prompts
    }
    return JudgedPrompts(sets, borderline["kinds"], list(JAILBREAK_FORMS) if wrapped else [])


class Selectivity:
    heldout_measures = True  # KL on the Alpaca report prompts, answers changed; off on tuning data (key_threshold.py)

    def __init__(self, wrapped: bool = False) -> None:
        self.bench = Bench(batch_size=64)
        model, tokenizer = self.bench.model, self.bench.tokenizer
        self.prompts = report_prompts(wrapped)
        config = model.config
        self.heads = config.num_hidden_layers * config.num_attention_heads
        self.neurons = config.num_hidden_layers * config.intermediate_size
        self.probe = demo_probe(model, tokenizer, "refusal", DemoSettings().output, 64)
        self.probe_prompts = len({example.prompt for example in self.probe})
        self.references: dict[Any, Any] = {DEFAULTS.reference: self.bench.utility}
        self.meters: dict[Any, KLMeter] = {DEFAULTS.reference: self.bench.meter}
        self.vectors: dict[Any, Any] = {}
        self.base_answers: dict[str, list[str]] = {}  # the base model's answers to CHANGED, set by the base row
        # What the gates are fitted against (--gate-reference adds prompt files).
        self.gate_reference: tuple[str, ...] = DEFAULTS.reference

    @property
    def sets(self) -> dict[str, list[str]]:
        return self.prompts.sets

    @property
    def forms(self) -> list[str]:
        return self.prompts.forms

    def reference(self, sets: Any) -> Any:
        """The reference data of ``sets`` (the default's, benign alone, or PUBLIC), made on first use: a run of some
        methods builds only what they read."""
        if sets not in self.references:
            model, tokenizer = self.bench.model, self.bench.tokenizer
            names = [*DEFAULTS.reference, *public_benign_files()] if sets == PUBLIC else sets
            data = reference_data(model, tokenizer, names, batch_size=64, cache=CACHE if sets == PUBLIC else None)
            self.references[sets] = data
        return self.references[sets]

    def meter(self, sets: Any) -> KLMeter:
        """The KL meter of the base model on the reference data of ``sets``."""
        if sets not in self.meters:
            self.meters[sets] = kl_meter(self.bench.model, self.bench.tokenizer, self.reference(sets), batch_size=32)
        return self.meters[sets]

    def vectors_for(self, sets: Any) -> Any:
        """Steering vectors with the reference inputs of ``sets``; PUBLIC adds the HarmBench tune half to the probe."""
        if sets not in self.vectors:
            model, tokenizer, data = self.bench.model, self.bench.tokenizer, self.reference(sets)
            probe = self.probe
            if sets == PUBLIC:
                public_probe = generate_probe(
                    model,
                    tokenizer,
                    harmbench_behaviours(HARMBENCH, "tune"),
                    "refusal",
                    batch_size=64,
                    cache=CACHE / "probe-harmbench-tune.jsonl",
                    show_progress=False,
                )
                probe = ContrastiveDataset([*probe, *public_probe], "shipped + HarmBench tune half")
            self.vectors[sets] = extract_steering_vectors(
                model, tokenizer, probe, reference=(data.prompts, data.responses), show_progress=False
            )
        return self.vectors[sets]

    def measure(self, model: Any, context: Any = None) -> dict[str, Any]:
        """A row's rates and answers; the first row measured is the base model's, whose answers to CHANGED the
        others' are compared with."""
        sets = self.prompts.asked
        prompts = [p for name in sets for p in sets[name]]
        with context() if context is not None else nullcontext():
            answers = iter(self.bench.generate(model, prompts, 32))
        answered = {name: [next(answers) for _ in sets[name]] for name in sets}
        rates = self.prompts.judged(answered)
        if not self.heldout_measures:
            return rates
        rates["kl_heldout"] = self.bench.heldout_meter(model, context or nullcontext)
        rates["answers"] = answered  # every answer, so that another judge can read the row again
        if not self.base_answers:
            self.base_answers = {name: answered[name] for name in CHANGED}
            return rates
        # Ranked by the base model: the edit's adapter disabled, or the plain model without the steering hooks.
        base_context = getattr(model, "disable_adapter", nullcontext)
        for name in CHANGED:
            rates[f"{name}_changed"] = changed_share(
                model,
                self.bench.tokenizer,
                self.sets[name],
                answered[name],
                self.base_answers[name],
                context=base_context,
                batch_size=32,
            )
        return rates

    def peer(self, name: str, budget: float) -> dict[str, Any]:
        model, vectors, meter = self.bench.model, self.vectors_for(("benign",)), self.meter(("benign",))
        if name == "steering":
            make = lambda s: lambda: steer(model, vectors, s)  # noqa: E731
        else:
            make = lambda s: lambda: rank_one_injection(model, vectors, s)  # noqa: E731
        amount, history = largest_within(lambda s: meter(model, make(s)), budget, max_scale=256.0)
        kl = next(value for scale, value in history if scale == amount)
        return {"strength": amount, "kl_calibration": kl, "heads": "all", "neurons": "all"} | self.measure(
            model, make(amount)
        )

    def gates(self, budget: float, amount: float | None = None, fit: str | None = None) -> dict[str, Any]:
        """The fitted gates of gates.py at the variant and amount chosen there on tuning data (CHOSEN; ``fit`` and
        ``amount`` instead), if their KL on the default reference is within the budget (the amount is not searched:
        below threshold the gates are silent)."""
        import gates  # gates.py imports this module

        fit = fit or gates.CHOSEN
        vectors, model = self.vectors_for(DEFAULTS.reference), self.bench.model
        stacked = fit.startswith("stack:")  # stack:BUDGET:VARIANT, the default edit at BUDGET beside the gates
        stack_budget, variant = fit.split(":", 2)[1:] if stacked else ("", fit)
        plan, amounts, _ = gates.variant_plan(self, vectors, variant)
        amount = amounts[0] if amount is None else amount
        edit = lambda: gates.with_gates(model, plan, amount)  # noqa: E731
        # The default's adapter goes into `model` itself; measured through its PeftModel, whose disabled adapter is
        # the base the answers changed are ranked by.
        edited = gates.stacked_default(self, vectors, float(stack_budget)) if stacked else model
        kl = self.meter(DEFAULTS.reference)(edited, edit)
        if kl > budget:
            raise BudgetError(f"the gates cost KL {kl:.4f} on the reference, over {budget:g}")
        gated = [layer for layer, *_ in plan]
        row = {"fit": fit, "amount": amount, "kl_calibration": kl, "layers": gated}
        row |= {"gate_reference": list(self.gate_reference)} if self.gate_reference != DEFAULTS.reference else {}
        heads = edited.edit_reports["default"].edited_heads / self.heads if stacked else 0.0
        row |= {"heads": heads, "neurons": len(gated) / self.neurons}
        row |= self.measure(edited, edit)
        if stacked:
            edited.unload()
        return row

    def alphasteer(self, budget: float) -> dict[str, Any]:
        """AlphaSteer's rank-one null-space steering of gates.py (ALPHASTEER), searched to the budget on the default
        reference."""
        import gates

        first, last, share = ALPHASTEER
        vectors, model = self.vectors_for(DEFAULTS.reference), self.bench.model
        plan = gates.alphasteer_plan(gates.mlp_statistics(self), vectors, range(first, last + 1), share)
        make = lambda s: lambda: gates.with_alphasteer(model, plan, s)  # noqa: E731
        amount, history = largest_within(
            lambda s: self.meter(DEFAULTS.reference)(model, make(s)), budget, max_scale=256.0
        )
        kl = next(value for scale, value in history if scale == amount)
        row = {"amount": amount, "kl_calibration": kl, "layers": list(range(first, last + 1)), "heads": 0.0}
        return row | {"neurons": 0.0} | self.measure(model, make(amount))

    def edit(self, name: str, budget: float) -> dict[str, Any]:
        sets, settings = EDITS[name]
        settings = replace(settings, max_kl=budget)
        model = self.bench.model
        edited = edit_model(
            model,
            self.vectors_for(sets),
            settings,
            utility=self.reference(sets),
            tokenizer=self.bench.tokenizer,
            kl_meter=self.meter(sets),
        )
        calibration, report = edited.calibrations["default"], edited.edit_reports["default"]
        threshold = threshold_of(name)  # rows without one: keys orthogonal to the reference mean, from before it
        row = {
            **({"key_threshold": threshold} if threshold is not None else {}),
            "scale": calibration.scale,
            "kl_calibration": calibration.kl,
            "heads": report.edited_heads / self.heads,  # shares of the whole model's heads and neurons
            "neurons": report.edited_neurons / self.neurons,
        } | self.measure(edited)
        edited.unload()
        return row


# Each edit method: the reference sets its keys and KL budget are measured on, and its settings (max_kl set per run).
EDITS: dict[str, tuple[Any, Any]] = {
    "paper": (("benign",), PAPER),
    "contrast": (PLAIN, replace(DEFAULTS, key_direction="contrast", max_head_share=0.2, reference=PLAIN)),
    "default": (DEFAULTS.reference, DEFAULTS),
    "default+public": (PUBLIC, DEFAULTS),
    "public-sparse": (PUBLIC, replace(DEFAULTS, max_head_share=0.05)),
}
METHODS = ("steering", "rank-one", *EDITS, "gates", "alphasteer")


def threshold_of(method: str) -> float | None:
    """The key threshold a method's rows are run with (None: its keys have none): the solver's, read when called,
    so a run that varies it (key_threshold.py) records the value it solved with."""
    selective = method in EDITS and EDITS[method][1].key_direction == "selective"
    return scores.SELECTIVE_THRESHOLD if selective else None


def variant(row: dict[str, Any]) -> tuple[str, float, float | None]:
    """What a rerun replaces: the row of the same method, budget and key threshold."""
    return row["method"], row["budget"], row.get("key_threshold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--rejudge", action="store_true", help="score the saved rows' answers again with the current refusal judge"
    )
    parser.add_argument(
        "--wrapped",
        action="store_true",
        help="also ask the harmful and borderline prompts in each jailbreak form (about 5x the generation); results go to "
        "selectivity-wrapped.json",
    )
    parser.add_argument(
        "--gate-amount", type=float, help="the gates' amount instead of the one chosen in gates.py (gates.CHOSEN)"
    )
    parser.add_argument(
        "--gate-fit",
        nargs="+",
        default=[None],
        help="the gates' variants (see gates.py), a row each, instead of gates.CHOSEN",
    )
    parser.add_argument(
        "--gate-reference",
        nargs="+",
        default=[],
        metavar="FILE",
        help="prompt files whose answers join the default reference the gates are fitted against (a tuning experiment)",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the saved rows of other methods and budgets (rows carry probe_prompts), and the base row",
    )
    parser.add_argument(
        "--name",
        help="results/<name>.json and .png instead of selectivity(-wrapped): a run on another machine or dtype, whose "
        "rows must not be compared with the saved ones",
    )
    args = parser.parse_args()
    results = args.name or ("selectivity-wrapped" if args.wrapped else "selectivity")
    if args.plot_only:
        plot(json.loads((RESULTS / f"{results}.json").read_text())["rows"], results)
        return
    if args.rejudge:
        rejudge(results)
        return
    run = Selectivity(wrapped=args.wrapped)
    run.gate_reference += tuple(args.gate_reference)
    saved = json.loads((RESULTS / f"{results}.json").read_text()) if (RESULTS / f"{results}.json").is_file() else None
    if (
        args.append
        and saved is not None
        and saved["rows"][0]["method"] == "base"
        and saved["sets"] == {k: len(v) for k, v in run.sets.items()}
        and saved.get("forms", []) == run.forms
        and "answers" in saved["rows"][0]
    ):
        rows = saved["rows"][:1]  # the base model's answers do not change between runs on the same sets
        run.base_answers = rows[0]["answers"]
    else:
        rows = [{"method": "base", "budget": 0.0} | run.measure(run.bench.model)]
    print({k: v for k, v in rows[0].items() if k != "answers"}, flush=True)
    if args.append and saved is not None:
        rerun = {(method, budget, threshold_of(method)) for method in args.methods for budget in args.budgets}
        rows += [row for row in saved["rows"] if row["method"] in METHODS and variant(row) not in rerun]
    fits = {method: args.gate_fit if method == "gates" else [None] for method in args.methods}
    for method, budget, fit in [(m, b, f) for m in args.methods for b in args.budgets for f in fits[m]]:
        start = time.perf_counter()
        try:
            if method == "gates":
                row = run.gates(budget, args.gate_amount, fit)
            elif method == "alphasteer":
                row = run.alphasteer(budget)
            elif method in ("steering", "rank-one"):
                row = run.peer(method, budget)
            else:
                row = run.edit(method, budget)
        except BudgetError as error:
            print(f"{method} at KL {budget}: {error}", flush=True)
            continue
        seconds = round(time.perf_counter() - start)
        row = {"method": method, "budget": budget, "seconds": seconds, "probe_prompts": run.probe_prompts} | row
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "answers"}, flush=True)
        rows[1:] = sorted(
            [*rows[1:], row], key=lambda r: (METHODS.index(r["method"]), r.get("key_threshold", -1), r["budget"])
        )
        save_results(
            results,
            {
                "command": shlex.join(["python", "benchmarks/selectivity.py", *sys.argv[1:]]),
                "sets": {k: len(v) for k, v in run.sets.items()},
                "forms": run.forms,
                "rows": rows,
            },
        )
    plot(rows, results)


def rejudge(name: str) -> None:
    """Refusal rates of results/<name>.json computed again from each row's saved answers (rows saved before rows kept
    every answer are left out: their rates came from another judge)."""
    data = json.loads((RESULTS / f"{name}.json").read_text())
    prompts = report_prompts(wrapped=bool(data["forms"]), imperative="imperative" in data["sets"])
    if data["forms"] != prompts.forms or data["sets"] != {k: len(v) for k, v in prompts.sets.items()}:
        raise SystemExit(f"results/{name}.json was asked other prompts than the report sets of now")
    kept = [row for row in data["rows"] if prompts.asked.keys() <= row.get("answers", {}).keys()]
    print(f"{name}: {len(kept)} rows judged again, {len(data['rows']) - len(kept)} without every answer left out")
    data["rows"] = [row | prompts.judged(row["answers"]) for row in kept]
    save_results(name, data)
    plot(data["rows"], name)


def plot(rows: list[dict[str, Any]], name: str) -> None:
    """The frontier of plain prompts, and with --wrapped beside it the frontier of the same prompts wrapped."""
    from steer2edit_peft.core.figures import pyplot, save_figure

    plt = pyplot()
    base = rows[0]
    panels = [("", "plain prompts")] + (
        [("/wrapped", "in jailbreak forms (mean)")] if "harmful/wrapped" in base else []
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4.3 + 4.3 * len(panels), 4.6), squeeze=False)
    for axis, (suffix, title) in zip(axes[0], panels):
        harmful, borderline = f"harmful{suffix}", f"borderline{suffix}"
        curve = lambda r: (r["method"], r.get("key_threshold"), r.get("fit"))  # noqa: E731
        for method, threshold, fit in dict.fromkeys(map(curve, rows[1:])):
            points = [r for r in rows[1:] if curve(r) == (method, threshold, fit)]
            points.sort(key=lambda r: r["budget"])
            x = [100 * (r[borderline] - base[borderline]) for r in points]
            y = [100 * (r[harmful] - base[harmful]) for r in points]
            label, style = f"{method} {fit}" if fit else method, "-"
            if threshold_of(method) is not None:  # selective rows from before the keys' threshold are drawn dotted
                label = f"{method}, threshold {threshold:g}" if threshold is not None else f"{method}, before threshold"
                style = "-" if threshold is not None else ":"
            axis.plot(x, y, marker="o", label=label, ls=style)
            for r, xi, yi in zip(points, x, y):
                axis.annotate(f"{r['budget']:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.axvline(5, color="grey", lw=0.8, ls="--")
        axis.set_xlim(left=min(0, axis.get_xlim()[0]))  # the base model's point, 0 added, always in view
        axis.set_ylim(bottom=min(0, axis.get_ylim()[0]))
        axis.set_xlabel("borderline refusal added (points, report half)")
        axis.set_ylabel("HarmBench refusal added (points, report half)")
        axis.set_title(f"{title}: refusal gained vs over-refusal added", fontsize=9)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points fill the axes
    figure.suptitle("Per KL budget (labels)", fontsize=9)
    figure.tight_layout()
    print(f"wrote {save_figure(figure, RESULTS / f'{name}.png')}")


if __name__ == "__main__":
    main()
