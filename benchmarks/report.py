"""Print the Markdown tables of BENCHMARKS.md from benchmarks/results/*.json.

python benchmarks/report.py > /tmp/tables.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import RESULTS


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def extraction(data: dict[str, Any]) -> str:
    rows = []
    for dtype, entry in data["by_dtype"].items():
        for name, seconds in entry["seconds"].items():
            rows.append(
                [
                    dtype,
                    name,
                    f"{seconds:.3f}",
                    f"{entry['tokens_per_second'][name]:.0f}",
                    f"{entry['ratio_to_steer2edit'][name]:.2f}",
                ]
            )
    agreement = ", ".join(f"{d}: {e['max_relative_difference_of_means']:.1e}" for d, e in data["by_dtype"].items())
    note = f"\n\n{data['examples']} examples, batch size {data['batch_size']}; vectors agree with the per-sample ones to {agreement} (max relative difference)."
    return table(["dtype", "method", "seconds", "tokens/s", "time / steer2edit"], rows) + note


def inference(data: dict[str, Any]) -> str:
    cases = data["cases"]
    names = list(next(iter(cases.values()))["seconds"])
    frozen = "overhead_vs_frozen_base" in next(iter(cases.values()))
    key = "overhead_vs_frozen_base" if frozen else "overhead_vs_base"
    rows = [
        [name] + [f"{cases[c]['seconds'][name] * 1000:.0f} ms ({100 * cases[c][key][name]:+.1f}%)" for c in cases]
        for name in names
    ]
    reference = "base, frozen weights" if frozen else "base"
    return table(["model"] + list(cases), rows) + f"\n\nPercentages: time relative to {reference}."


def forward_costs(data: dict[str, Any]) -> str:
    """large_edit and moe_edit: each candidate's time per shape, and its overhead over the base."""
    shapes = data["shapes"]
    names = list(next(iter(data["seconds"].values())))
    rows = [
        [name]
        + [
            f"{data['seconds'][shape][name] * 1000:.1f} ms ({100 * data['overhead_vs_base'][shape][name]:+.1f}%)"
            for shape in shapes
        ]
        for name in names
    ]
    header = ["model"] + [f"{shape} {size[0]} x {size[1]}" for shape, size in shapes.items()]
    return table(header, rows) + "\n\nPercentages: time relative to the base."


def storage(data: dict[str, Any]) -> str:
    rows = [
        [name, f"{v['bytes'] / 1024:.1f} KiB", f"{v['load_seconds'] * 1000:.0f} ms" if "load_seconds" in v else "-"]
        for name, v in data.items()
        if name != "machine"
    ]
    return table(["what", "size on disk", "PeftModel.from_pretrained"], rows)


def solve(data: dict[str, Any]) -> str:
    rows = [
        [name, f"{v['parameters'] / 1e6:.1f}M", v["heads"], v["neurons"], f"{v['seconds'] * 1000:.1f} ms"]
        for name, v in data.items()
        if name != "machine"
    ]
    return table(["model", "parameters", "heads", "neurons", "solve time"], rows)


def memory(data: dict[str, Any]) -> str:
    rows = [
        [size, f"{v['extraction_growth_mib']:.1f} MiB", f"{v['peak_during_kib'] / 1024:.0f} MiB"]
        for size, v in data.items()
        if size != "machine"
    ]
    return table(["probe examples", "peak rise during extraction", "peak resident"], rows)


def _frontier_cell(task: str, row: dict[str, Any]) -> str:
    if "error" in row:
        return "no edit within budget"
    if task == "refusal":
        text = f"{row['refusal']:.1%} / {row['over_refusal']:.1%}"
    elif task == "truthful":
        text = f"MC1 {row['mc1']:.3f}, MC2 {row['mc2']:.3f}, best>incorrect {row['best_vs_first_incorrect']:.3f}"
    else:
        text = f"GSM8K {row['mean_length']:.1f} tokens, {row['accuracy']:.0%} correct"
        if "arithmetic_accuracy" in row:
            text += f"; sums {row['arithmetic_mean_length']:.1f} tokens, {row['arithmetic_accuracy']:.0%} correct"
    extra = [f"{row['heads']} heads"] if "heads" in row else []
    if row.get("budget"):
        extra.append(f"held-out KL {row['kl_heldout']:.3f}")
    return text + (f" ({'; '.join(extra)})" if extra else "")


def frontier(data: dict[str, Any]) -> str:
    parts = []
    for task, entry in data.items():
        if not isinstance(entry, dict) or "rows" not in entry:
            continue
        methods = list(dict.fromkeys(r["method"] for r in entry["rows"] if r["method"] != "base"))
        base = next(r for r in entry["rows"] if r["method"] == "base")
        rows = []
        for budget in sorted({r["budget"] for r in entry["rows"] if r["method"] != "base"}):
            cells = {r["method"]: _frontier_cell(task, r) for r in entry["rows"] if r["budget"] == budget}
            rows.append([budget] + [cells.get(m, "-") for m in methods])
        parts.append(
            f"**{task}** (base: {_frontier_cell(task, base)}; `{entry.get('command', '')}`, {entry.get('seconds', '?')} s)"
            "\n\n" + table(["KL budget"] + methods, rows)
        )
    return "\n\n".join(parts)


def selectivity(data: dict[str, Any]) -> str:
    base = data["rows"][0]

    def points(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.1f}% ({100 * (row[key] - base[key]):+.1f})"

    def share(value: Any) -> str:
        return value if isinstance(value, str) else f"{100 * value:.1f}%"

    rows = [
        [
            row["method"],
            f"{row['budget']:g}" if row["budget"] else "",
            points(row, "harmful"),
            points(row, "borderline"),
            points(row, "benign"),
            f"{row['kl_heldout']:.3f}",
            _changed(row),
            f"{share(row.get('heads', ''))} / {share(row.get('neurons', ''))}" if "heads" in row else "",
            f"{100 * ((row['harmful'] - base['harmful']) - (row['borderline'] - base['borderline'])):+.1f}",
            str(row.get("borderline_refused_by_kind", {}).get("figurative", "")),
            str(row.get("probe_prompts", "")),
            f"{row['key_threshold']:g}" if "key_threshold" in row else "",
        ]
        for row in data["rows"]
    ]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sets"].items())
    header = ["method", "KL budget", "harmful refused", "borderline refused", "benign refused", "KL (Alpaca)"]
    header += [
        "benign / borderline changed",
        "heads / neurons edited",
        "selectivity (points)",
        "figurative refused",
        "probe prompts",
        "key threshold",
    ]
    return (
        table(header, rows)
        + f"\n\nPrompts: {sizes}. Changed: the share of answers whose meaning changed from the base model's"
        " (evaluation.metrics.changed_share; blank: measured before the benchmark kept the base answers)."
        " Selectivity: harmful refusal gained minus borderline refusal added. Figurative"
        " refused: how many of the borderline prompts refused are figurative speech, of its 20 (blank: measured"
        " before the benchmark counted them). Key threshold: SELECTIVE_THRESHOLD of a selective edit's keys (blank"
        " for default, default+public and public-sparse: keys orthogonal to the reference mean, from before it)."
        + _borderline_overlap(data["rows"])
    )


def _changed(row: dict[str, Any]) -> str:
    """The shares of benign and borderline answers whose meaning changed; blank where the row has none."""
    if row["method"] == "base":
        return "0% / 0%" if "answers" in row else ""
    if "benign_changed" not in row:
        return ""
    return f"{100 * row['benign_changed']:.1f}% / {100 * row['borderline_changed']:.1f}%"


def _method(row: dict[str, Any]) -> str:
    """The row's method, and for gates their fit (stacked on the default edit: its KL budget and the gates' fit)."""
    if "fit" not in row:
        return row["method"]
    if not row["fit"].startswith("stack:"):
        extra = [Path(name).stem for name in row.get("gate_reference", []) if Path(name).suffix]
        return f"{row['method']} {row['fit']}" + "".join(f", fitted against {name} too" for name in extra)
    _, budget, fit = row["fit"].split(":", 2)
    return f"default at KL {budget} + gates {fit}"


def side_by_side(data: dict[str, Any]) -> str:
    """The issue's bars per method: plain and wrapped refusal, benign refusal, held-out KL (and its ratio to the
    calibrated KL), answers changed; then every form (wrapped)."""
    base = data["rows"][0]

    def points(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.1f} ({100 * (row[key] - base[key]):+.1f})"

    imperative = ("imperative",) if "imperative" in base else ()  # the borderline orders, in runs that asked them
    keys = ("harmful", "harmful/wrapped", "borderline", "borderline/wrapped", *imperative, "benign")
    rows = [
        [_method(row), *(points(row, key) for key in keys), f"{row['kl_heldout']:.4f}"]
        + [f"{row['kl_heldout'] / row['kl_calibration']:.1f}x" if row.get("kl_calibration") else "", _changed(row)]
        for row in data["rows"]
    ]
    header = ["method", "harmful plain", "harmful wrapped", "borderline plain", "borderline wrapped"]
    header += ["borderline imperative"] * bool(imperative) + ["benign", "KL (Alpaca)", "KL / calibrated"]
    header += ["benign / borderline changed"]
    return table(header, rows) + "\n\n" + wrapped(data)


def wrapped(data: dict[str, Any]) -> str:
    """Plain and wrapped refusal side by side: each set plain, its mean over the jailbreak forms, then each form."""
    base, forms = data["rows"][0], data["forms"]

    def change(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.1f} ({100 * (row[key] - base[key]):+.1f})"

    header = ["method", "KL budget"]
    for name in ("harmful", "borderline"):
        header += [f"{name} plain", f"{name} wrapped"] + [f"{name} {form}" for form in forms]
    rows = [
        [_method(row), f"{row['budget']:g}" if row["budget"] else ""]
        + [
            change(row, key)
            for name in ("harmful", "borderline")
            for key in (name, f"{name}/wrapped", *(f"{name}/{form}" for form in forms))
        ]
        for row in data["rows"]
    ]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sets"].items())
    return (
        table(header, rows)
        + f"\n\nRefused, % (points over the base). Prompts: {sizes}, each also in {len(forms)} jailbreak forms"
        " (`steer2edit_peft/evaluation/wrappers.py`); wrapped: the mean over the forms."
    )


def _borderline_overlap(rows: list[dict[str, Any]]) -> str:
    """How many of the borderline prompts each row refuses the base and the weakest steering row also refuse, and
    which neither does (rows that record them)."""
    recorded = [row for row in rows[1:] if "borderline_refused" in row]
    steering = min((r for r in recorded if r["method"] == "steering"), key=lambda r: r["budget"], default=None)
    if steering is None:
        return ""
    base, steered = set(rows[0].get("borderline_refused", [])), set(steering["borderline_refused"])
    lines = []
    for row in recorded:
        if row is steering:
            continue
        refused = set(row["borderline_refused"])
        threshold = f", key threshold {row['key_threshold']:g}" if "key_threshold" in row else ""
        lines.append(
            f"- {row['method']} {row['budget']:g}{threshold}: {len(refused)} refused, {len(refused & base)} of them by the base,"
            f" {len(refused & steered)} by steering at KL {steering['budget']:g};"
            f" by neither: {sorted(refused - base - steered)}"
        )
    return "\n\nBorderline prompts refused (numbers in the report half):\n" + "\n".join(lines)


def key_threshold(data: dict[str, Any]) -> str:
    """The tuning-data check that chose SELECTIVE_THRESHOLD (key_threshold.py), the base model's row first."""
    base = data["base"]
    rows = [["base", "", *(f"{100 * base[name]:.1f}%" for name in ("harmful", "borderline", "benign"))]]
    rows += [
        [
            f"{row['key_threshold']:g}",
            f"{row['scale']:.1f}",
            *(
                f"{100 * row[name]:.1f}% ({100 * (row[name] - base[name]):+.1f})"
                for name in ("harmful", "borderline", "benign")
            ),
        ]
        for row in data["rows"]
    ]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sets"].items())
    header = ["key threshold t", "scale", "AdvBench refused", "borderline (tuning half) refused", "Alpaca refused"]
    return table(header, rows) + f"\n\nPrompts: {sizes}; KL budget {data['budget']:g}. Chosen: t = {data['chosen']:g}."


def gates(data: dict[str, Any]) -> str:
    """The gate candidates against the default edit on tuning data (gates.py), the base model's row first."""
    base = data["rows"][0]
    rows = [
        [
            row["method"],
            "no layer gated" if row.get("layers") == [] else f"{row['amount']:.3g}" if "amount" in row else "",
            f"{row['kl_calibration']:.4f}" if "kl_calibration" in row else "",
            *(
                f"{100 * row[name]:.1f}% ({100 * (row[name] - base[name]):+.1f})"
                if name in row
                else row.get("note", "")
                for name in ("harmful", "borderline", "benign")
            ),
        ]
        for row in data["rows"]
    ]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sets"].items())
    header = ["method", "scale / lambda", "KL (reference)", "AdvBench refused", "borderline (tuning half)", "Alpaca"]
    budget = data["budget"]
    kl = "amounts fixed, KL measured at them" if budget is None else f"KL budget {budget:g}"
    return table(header, rows) + f"\n\nPrompts: {sizes}; {kl} on the default reference answers."


def ceiling(data: dict[str, Any]) -> str:
    """Per layer, how the two detectors of ceiling.py read the report split: AUC, the shares above the threshold
    set on the tuning reference, and the shares above the report split's own 3% / 5% borderline threshold."""
    percent = lambda value: f"{100 * value:.0f}%"  # noqa: E731
    logistic = {row["layer"]: row for row in data["detectors"]["logistic"]}
    rows = []
    for row in data["detectors"]["mean difference"]:
        fitted = logistic[row["layer"]]
        rows.append(
            [
                row["layer"],
                *(f"{row[key]:.3f} / {fitted[key]:.3f}" for key in ("auc_plain", "auc_wrapped", "auc_imperative")),
                *(
                    f"{percent(row[key])} / {percent(fitted[key])}"
                    for key in (
                        "probe_above_tuned",
                        "harmful_above_tuned",
                        "harmful_wrapped_above_tuned",
                        "borderline_above_tuned",
                        "borderline_wrapped_above_tuned",
                        "harmful_above_oracle",
                        "harmful_wrapped_above_oracle",
                        "harmful_above_imperative_oracle",
                    )
                ),
            ]
        )
    header = [
        "layer",
        "AUC harmful vs borderline, plain",
        "AUC wrapped",
        "AUC vs the imperative borderline",
        "probe above tuned threshold",
        "harmful above it, plain",
        "wrapped",
        "borderline above it, plain",
        "wrapped",
        "harmful above the report's 3% borderline threshold",
        "wrapped (5%)",
        "harmful above the imperative borderline's 3% threshold",
    ]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sets"].items() if "/" not in name)
    return table(header, rows) + f"\n\nEach cell: mean difference / logistic detector. Prompts: {sizes}."


def engines(name: str) -> Any:
    def render(data: dict[str, Any]) -> str:
        rows = [
            [candidate, f"{v['tokens_per_s']:.1f}", f"x{v['relative']:.2f}"]
            for candidate, v in data.items()
            if isinstance(v, dict) and "tokens_per_s" in v
        ]
        return table([name, "tokens/s", "relative"], rows) + f"\n\n{data.get('max_new_tokens')} new tokens per prompt."

    return render


def main() -> None:
    for name, render in [
        ("extraction", extraction),
        ("inference", inference),
        ("large_edit", forward_costs),
        ("moe_edit", forward_costs),
        ("storage", storage),
        ("solve", solve),
        ("memory", memory),
        ("frontier", frontier),
        ("selectivity", selectivity),
        ("selectivity-changed", selectivity),
        ("selectivity-wrapped", wrapped),
        ("selectivity-wrapped-gates", wrapped),
        ("selectivity-wrapped-gates-3", wrapped),
        ("selectivity-wrapped-gates-in-order", wrapped),
        ("selectivity-wrapped-gates-decisions", wrapped),
        ("selectivity-wrapped-gates-capped", wrapped),
        ("selectivity-peers", side_by_side),
        ("selectivity-stacked", side_by_side),
        ("ceiling", ceiling),
        ("key_threshold", key_threshold),
        ("gates", gates),
        ("gates-fitted", gates),
        ("gates-package", gates),
        ("gates-in-order", gates),
        ("gates-decisions", gates),
        ("gates-amounts-decisions", gates),
        ("gates-direction-stack", gates),
        ("gates-mean-difference", gates),
        ("gates-mean-difference-2", gates),
        ("selectivity-imperative", side_by_side),
        ("engines_llama_cpp", engines("llama.cpp")),
        ("engines_vllm", engines("vLLM CPU build")),
    ]:
        data = load(name)
        if data is None:
            continue
        machine = data.get("machine", {})
        print(
            f"### {name}\n\n{render(data)}\n\n_{machine.get('date')}, {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}_\n"
        )


if __name__ == "__main__":
    main()
