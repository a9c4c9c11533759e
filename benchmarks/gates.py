"""Gates, not slopes (a candidate, measured before it is built): the refusal edit written by MLP neurons, whose own
nonlinearity keeps them near silent below a threshold, instead of rank-one edits that fire in proportion to k . x.

python benchmarks/gates.py [--variants 14:24:0.4:30 ...] [--budget 0.02]   # results/gates.json

Two candidates, each calibrated to the same KL budget on the default reference answers as the default edit, and
measured on the tuning sets of key_threshold.py (AdvBench [0:100) harmful, the borderline tuning half, Alpaca
[0:30)), never on the report sets:
  neurons   existing neurons as gates: each down_proj input n scored by |p_n| / sqrt(p_n^2 + A_nn + w D_nn) (p its
            mean at the decision token of the probe's prompts, A and D its second moments along the reference
            answers and at the reference prompts' decision token, w = SELECTIVE_DECISION_WEIGHT); the top 32 get
            lambda sign(p_n) v_hat / |p_n| added to their down column.
  gates     one neuron per layer repurposed (the least used on the reference answers): gate row a k, up row
            r / |r|^2, down column lambda v_hat, so it writes lambda v_hat silu(a k . x) (r_hat . x |r|^-1). k is the
            selective key (solver.scores) over that layer's MLP input, x, with its threshold t: k . x < 0 until a
            prompt has moved a share t of the way from the reference towards the probe; a = sharpness / (k . d), d the
            probe's mean input less the reference's, makes silu close to relu there. A variant is first:last:t:sharpness.
  quantile  the same neurons, the threshold set where the gate is silent on the reference instead: the gate row is
            a (k0 - b r / |r|^2), k0 the key of t = 0, b the smallest shift that puts a share q of the readings of
            every reference answer token and decision token below zero, a = sharpness / (gate row . probe mean);
            a variant is first:last:qQ:sharpness (a layer whose probe mean reads below the shift is left out).
  fit       the package's gates (solver/gates.py, EditSettings.gate_amount): one neuron per layer whose gate row is a
            detector fitted on single tokens (a logistic regression without intercept: the probe prompts' decision
            tokens against every reference token that predicts an answer token), shifted along the reference's
            constant direction c (c . x = 1 by least squares) until a share q of the reference tokens reads below
            zero; the up row is c, the down column the layer's steering vector; not searched to the budget (silent
            below threshold, the KL barely moves with the amount): a variant is fit:first:last:sharpness:amounts:q.
            CHOSEN is the one selectivity.py measures.
  stack     stack:BUDGET:VARIANT, the default edit calibrated to BUDGET with the gates of VARIANT written beside it.
  fitdir    fit, each gate writing instead the unit difference of the residual stream after its layer at the
            decision token, probe prompts' mean less the reference prompts', at the steering vector's norm.
v_hat is each layer's attention steering direction (the default edit's vectors); lambda is found by the same
search as the default's scale (largest_within).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from common import save_results, written
from key_threshold import TuningSets

import steer2edit_peft.solver.scores as scores
from steer2edit_peft.core.likelihood import response_batches
from steer2edit_peft.core.readings import answer_inputs, last_token_inputs
from steer2edit_peft.core.settings import DEFAULTS, GATES, SELECTIVE_DECISION_WEIGHT
from steer2edit_peft.solver.calibrate import largest_within
from steer2edit_peft.solver.edit import edit_model
from steer2edit_peft.solver.gates import fit_gates

SETS = ("harmful", "borderline", "benign")
NEURONS = 32
# The fitted gates selectivity.py measures on the report sets (a fit: variant, its first amount): on these
# tuning sets, the most harmful refusal with borderline refusal at most one prompt over the default edit's and Alpaca
# refusal at most the default's (BENCHMARKS.md, "Gates instead of slopes"); the decision quantile (":1") added after
# the report splits had been read (BENCHMARKS.md, "Decision tokens below threshold").
CHOSEN = "fitorder:14:24:30:2:0.999:1"


def mlp_statistics(run: TuningSets) -> dict[str, list[torch.Tensor]]:
    """Per layer (float64): the MLP input's mean at the probe prompts' decision token (probe), the reference prompts'
    (reference), its second moments there (probe_moment, decision) and along the reference answers (answers); the
    same for the down_proj input, its neurons (neuron_probe, neuron_decision, neuron_answers)."""
    model, tokenizer, data = run.bench.model, run.bench.tokenizer, run.reference(DEFAULTS.reference)
    layers = model.model.layers  # the Llama layout of the embedded model
    names = {
        f"model.layers.{i}.mlp.{part}": (i, part) for i in range(len(layers)) for part in ("gate_proj", "down_proj")
    }
    probe_prompts = list(dict.fromkeys(example.prompt for example in run.probe))
    stats: dict[str, list[Any]] = {}
    with torch.no_grad():
        for prompts, mean, moment in (
            (probe_prompts, "probe", "probe_moment"),
            (data.prompts, "reference", "decision"),
        ):
            inputs = last_token_inputs(model, tokenizer, prompts, list(names), batch_size=32)
            for name, x in inputs.items():
                prefix = "" if names[name][1] == "gate_proj" else "neuron_"
                x = x.double()
                stats.setdefault(prefix + mean, []).append(x.mean(0))
                if moment:
                    stats.setdefault(prefix + moment, []).append(x.T @ x / len(x) if not prefix else (x * x).mean(0))
        stats |= answer_moments(run)
    return stats


def over_reference_answers(run: TuningSets, record: dict[Any, Callable[[torch.Tensor], None]]) -> int:
    """One pass over the default reference answers: each module's input at the answer tokens goes to record[module]
    as [tokens, in] in float64 (for sums that the tokens themselves would not fit in memory for). Returns the number
    of tokens."""
    model, tokenizer, data = run.bench.model, run.bench.tokenizer, run.reference(DEFAULTS.reference)
    mask: dict[str, torch.Tensor] = {}

    def hook(callback: Callable[[torch.Tensor], None]):
        def pre(module: Any, args: tuple[Any, ...]) -> None:
            callback(args[0].double()[mask["tokens"]])

        return pre

    handles = [module.register_forward_pre_hook(hook(callback)) for module, callback in record.items()]
    tokens = 0
    try:
        with torch.no_grad():
            for input_ids, attention_mask, position_ids, answer in response_batches(
                tokenizer, data.prompts, data.responses, 16, data.system_prompt
            ):
                mask["tokens"], tokens = answer, tokens + int(answer.sum())
                model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        for handle in handles:
            handle.remove()
    return tokens


def answer_moments(run: TuningSets) -> dict[str, list[Any]]:
    """Second moments of the MLP input (full) and the down_proj input (per neuron) along the reference answers."""
    layers = run.bench.model.model.layers
    full: list[Any] = [0.0] * len(layers)
    diagonal: list[Any] = [0.0] * len(layers)

    def add(sums: list[Any], layer: int, square: Callable[[torch.Tensor], torch.Tensor]):
        def record(x: torch.Tensor) -> None:
            sums[layer] = sums[layer] + square(x)

        return record

    record = {}
    for i, layer in enumerate(layers):
        record[layer.mlp.gate_proj] = add(full, i, lambda x: x.T @ x)
        record[layer.mlp.down_proj] = add(diagonal, i, lambda x: (x * x).sum(0))
    tokens = over_reference_answers(run, record)
    return {"answers": [m / tokens for m in full], "neuron_answers": [m / tokens for m in diagonal]}


def direction(vectors: Any, layer: int) -> torch.Tensor:
    steering = vectors.direction(f"model.layers.{layer}.self_attn.o_proj")
    return steering / steering.norm()


def neuron_plan(stats: dict[str, list[torch.Tensor]], vectors: Any, first: int) -> list[tuple[int, int, Any]]:
    """The NEURONS existing neurons of layers >= first that best tell probe prompts from the reference."""
    probe = torch.stack(stats["neuron_probe"])
    cost = torch.stack(stats["neuron_answers"]) + SELECTIVE_DECISION_WEIGHT * torch.stack(stats["neuron_decision"])
    score = probe.abs() / (probe * probe + cost).sqrt()
    score[:first] = 0
    chosen = [divmod(int(i), score.shape[1]) for i in score.flatten().topk(NEURONS).indices]
    return [
        (layer, n, torch.sign(probe[layer, n]) / probe[layer, n].abs() * direction(vectors, layer))
        for layer, n in chosen
    ]


def with_neurons(model: Any, plan: list[tuple[int, int, Any]], amount: float) -> Any:
    columns = [(model.model.layers[layer].mlp.down_proj.weight[:, n], added) for layer, n, added in plan]
    return written([(column, column + amount * added.to(column)) for column, added in columns])


def least_used_neuron(model: Any, stats: dict[str, list[torch.Tensor]], layer: int) -> int:
    """The layer's MLP neuron that writes least along the reference answers (mean square input x |down column|^2)."""
    down = model.model.layers[layer].mlp.down_proj.weight.double()
    return int((stats["neuron_answers"][layer] * down.norm(dim=0) ** 2).argmin())


def gate_plan(
    model: Any, stats: dict[str, list[torch.Tensor]], vectors: Any, layers: range, threshold: float, sharpness: float
) -> list[tuple[int, int, Any, Any, Any]]:
    """(layer, neuron, gate row, up row, down column per unit lambda) of one repurposed neuron per layer."""
    plan = []
    for layer in layers:
        probe, reference = stats["probe"][layer], stats["reference"][layer]
        keys, _ = scores._selective(
            (probe - reference)[None],
            reference[None],
            stats["decision"][layer][None],
            stats["answers"][layer][None],
            threshold,
        )
        key = keys[0]
        gate_row = sharpness / float(key @ (probe - reference)) * key
        neuron, up_row = least_used_neuron(model, stats, layer), reference / reference.norm() ** 2
        plan.append((layer, neuron, gate_row, up_row, direction(vectors, layer)))
    return plan


def reference_inputs(run: TuningSets, layers: Iterable[int]) -> dict[int, torch.Tensor]:
    """Per layer, the MLP input [tokens, in] (float64) at every reference token that predicts an answer token (its
    decision token and the answer)."""
    data, names = run.reference(DEFAULTS.reference), {layer: f"model.layers.{layer}.mlp.gate_proj" for layer in layers}
    model, tokenizer = run.bench.model, run.bench.tokenizer
    read, _ = answer_inputs(model, tokenizer, data.prompts, data.responses, list(names.values()), data.system_prompt)
    return {layer: read[name].double() for layer, name in names.items()}


def reference_readings(run: TuningSets, rows: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per layer, rows [2, n] read at the MLP input of every reference token that predicts an answer token."""
    return {layer: x @ rows[layer].T for layer, x in reference_inputs(run, rows).items()}


def quantile_plan(
    run: TuningSets, stats: dict[str, list[torch.Tensor]], vectors: Any, layers: range, share: float, sharpness: float
) -> list[tuple[int, int, Any, Any, Any]]:
    """The plan of gate_plan with t = 0, each gate row shifted by b r / |r|^2 until a share of the reference's
    readings is below zero (bisection: the readings fall as b grows wherever r . x > 0)."""
    plan = gate_plan(run.bench.model, stats, vectors, layers, 0.0, 1.0)
    rows = {layer: torch.stack([gate, up]) for layer, _, gate, up, _ in plan}
    readings = reference_readings(run, rows)
    shifted = []
    for layer, neuron, gate, up, down in plan:
        key, along_reference = readings[layer].T
        low, high = -1e3, 1e3
        for _ in range(100):
            shift = (low + high) / 2
            low, high = (shift, high) if torch.quantile(key - shift * along_reference, share) > 0 else (low, shift)
        row = gate - high * up
        push = float(row @ stats["probe"][layer])
        if push > 0:
            shifted.append((layer, neuron, sharpness / push * row, up, down))
    return shifted


def fitted_settings(variant: str, num_layers: int) -> tuple[Any, list[float], str]:
    """(EditSettings, amounts, label) of a variant fit:first:last:sharpness:amounts:q[:qd] or fitorder:... (fitted
    in order at the first amount)."""
    kind, first, last, sharpness, amounts, *shares = variant.split(":")
    values = [float(amount) for amount in amounts.split(",")]
    share, decision = float((shares or ["1"])[0]), float(shares[1]) if len(shares) > 1 else None
    settings = replace(
        GATES,
        gate_layers=(int(first) / num_layers, int(last) / num_layers),
        gate_quantile=share,
        gate_sharpness=float(sharpness),
        gate_amount=values[0],
        gate_in_order=kind == "fitorder",
        gate_decision_quantile=decision,
    )
    label = f"{'in order, ' * (kind == 'fitorder')}fitted gates {first}:{last}:{sharpness}:q{share}"
    label += f":decisions q{decision}" if decision is not None else ""
    return settings, values, label


def fitted_plan(run: TuningSets, vectors: Any, settings: Any) -> list[Any]:
    """The package's gates (solver.gates.fit_gates) of these settings, as with_gates plans: (layer, neuron, gate row,
    up row, down column per unit amount)."""
    prompts = [example.prompt for example in run.probe if example.positive]
    reference = run.reference(run.gate_reference)
    fitted = fit_gates(run.bench.model, run.bench.tokenizer, prompts, reference, vectors, settings, batch_size=32)
    return [(gate.mlp.layer, gate.neuron, gate.gate_row, gate.up_row, gate.down_column) for gate in fitted]


def decision_directions(run: TuningSets, vectors: Any, layers: list[int]) -> dict[int, torch.Tensor]:
    """Per layer, the unit direction of the residual stream after it at the decision token: the probe prompts' mean
    minus the reference prompts' (the harmful-minus-harmless difference of refusal-direction ablation studies)."""
    model, tokenizer, data = run.bench.model, run.bench.tokenizer, run.reference(DEFAULTS.reference)
    count = model.config.num_hidden_layers
    names = {
        layer: f"model.layers.{layer + 1}.input_layernorm" if layer + 1 < count else "model.norm" for layer in layers
    }
    prompts = list(dict.fromkeys(example.prompt for example in run.probe if example.positive))
    system_prompt = vectors.options.get("system_prompt")
    probe = last_token_inputs(model, tokenizer, prompts, list(names.values()), system_prompt, batch_size=32)
    reference = last_token_inputs(model, tokenizer, data.prompts, list(names.values()), data.system_prompt, 32)
    directions = {}
    for layer, name in names.items():
        difference = probe[name].double().mean(0) - reference[name].double().mean(0)
        directions[layer] = difference / difference.norm()
    return directions


def variant_plan(run: TuningSets, vectors: Any, variant: str) -> tuple[list[Any], list[float], str]:
    """(with_gates plan, amounts, label) of a fit, fitorder or fitdir variant."""
    layers = run.bench.model.config.num_hidden_layers
    settings, amounts, label = fitted_settings(variant.replace("fitdir:", "fit:"), layers)
    plan = fitted_plan(run, vectors, settings)
    if variant.startswith("fitdir:"):  # each gate writes its layer's decision direction, at the same norm
        directions = decision_directions(run, vectors, [layer for layer, *_ in plan])
        plan = [(layer, n, gate, up, directions[layer] * down.norm()) for layer, n, gate, up, down in plan]
        label += ", writing the decision direction"
    return plan, amounts, label


def stacked_default(run: TuningSets, vectors: Any, budget: float) -> Any:
    """The default edit calibrated to ``budget`` (its PeftModel), injected into the model gates are written into."""
    reference, meter = run.reference(DEFAULTS.reference), run.meter(DEFAULTS.reference)
    settings, tokenizer = replace(DEFAULTS, max_kl=budget), run.bench.tokenizer
    return edit_model(run.bench.model, vectors, settings, utility=reference, tokenizer=tokenizer, kl_meter=meter)


def fixed_row(run: TuningSets, edit: Any, amount: float) -> dict[str, Any]:
    """The tuning sets measured at a given amount (a gate silent on the reference gives the KL search nothing to
    stop at), with the KL on the default reference there."""
    model, meter = run.bench.model, run.meter(DEFAULTS.reference)
    kl = meter(model, lambda: edit(amount))
    with edit(amount):
        rates = run.measure(model)
    return {"amount": amount, "kl_calibration": kl} | {name: rates[name] for name in SETS}


def with_gates(model: Any, plan: list[tuple[int, int, Any, Any, Any]], amount: float) -> Any:
    values = []
    for layer, n, gate_row, up_row, down_column in plan:
        mlp = model.model.layers[layer].mlp
        values += [(mlp.gate_proj.weight[n], gate_row), (mlp.up_proj.weight[n], up_row)]
        values.append((mlp.down_proj.weight[:, n], amount * down_column))
    return written(values)


def alphasteer_plan(
    stats: dict[str, list[torch.Tensor]], vectors: Any, layers: range, share: float
) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(layer, key, direction): per layer the key regressed to read 1 on each probe prompt's MLP input (ridge 1e-3 of
    its mean eigenvalue) within the null space of the reference's (the eigenvectors of its second moment, decision
    tokens and answers together, whose eigenvalue is below `share` of the largest)."""
    plan = []
    for layer in layers:
        values, vectors_ = torch.linalg.eigh(stats["decision"][layer] + stats["answers"][layer])
        null = vectors_[:, values < share * values.max()]
        moment = null.T @ stats["probe_moment"][layer] @ null
        ridge = 1e-3 * moment.diagonal().mean() * torch.eye(len(moment), dtype=moment.dtype)
        key = null @ torch.linalg.solve(moment + ridge, null.T @ stats["probe"][layer])
        plan.append((layer, key, direction(vectors, layer).double()))
    return plan


@contextmanager
def with_alphasteer(model: Any, plan: list[tuple[int, torch.Tensor, torch.Tensor]], amount: float) -> Iterator[None]:
    """Each planned layer's MLP output gets amount * direction (key . its input) added (AlphaSteer's form, rank one)."""

    def hook(key: torch.Tensor, steering: torch.Tensor):
        def add(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            reading = args[0] @ key.to(args[0])
            return output + amount * reading[..., None] * steering.to(output)

        return add

    layers = model.model.layers
    handles = [layers[layer].mlp.register_forward_hook(hook(key, steering)) for layer, key, steering in plan]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def calibrated_row(run: TuningSets, edit: Any, budget: float) -> dict[str, Any]:
    """Search the amount to the budget on the default reference, then measure the tuning sets at it."""
    model, meter = run.bench.model, run.meter(DEFAULTS.reference)
    amount, history = largest_within(lambda s: meter(model, lambda: edit(s)), budget, max_scale=256.0)
    if amount == 0:
        return {"amount": 0.0, "note": "over the budget at the smallest amount"}
    kl = next(value for scale, value in history if scale == amount)
    with edit(amount):
        rates = run.measure(model)
    return {"amount": amount, "kl_calibration": kl} | {name: rates[name] for name in SETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["default", "neurons", "12:24:0.2:10", "12:24:0.4:10", "14:24:0.4:30", "14:24:0.6:30", "14:24:0.8:30"]
        + ["15:17:0.6:30", "14:24:q0.99:30", "14:24:q0.999:30", "14:24:q1:30", "12:24:q1:10"]
        + ["alphasteer:12:24:0.001", "alphasteer:12:24:0.01"],
    )
    parser.add_argument("--budget", type=float, default=0.02)
    parser.add_argument("--name", default="gates", help="results/<name>.json (default: gates)")
    args = parser.parse_args()
    run = TuningSets()
    model = run.bench.model
    base = run.measure(model)
    rows: list[dict[str, Any]] = [{"method": "base"} | {name: base[name] for name in SETS}]
    vectors = run.vectors_for(DEFAULTS.reference)
    fitted = [v == "default" or v.startswith(("fit:", "fitorder:", "fitdir:", "stack:")) for v in args.variants]
    stats = {} if all(fitted) else mlp_statistics(run)  # what the candidates before the fitted ones read
    for variant in args.variants:
        start = time.perf_counter()
        if variant == "default":
            default = run.edit("default", args.budget)
            rows.append({"method": "default", "amount": default["scale"], "kl_calibration": default["kl_calibration"]})
            rows[-1] |= {name: default[name] for name in SETS}
        elif variant.startswith("stack:"):  # stack:BUDGET:VARIANT, the default edit at BUDGET and the gates
            _, budget, fit = variant.split(":", 2)
            gates, amounts, label = variant_plan(run, vectors, fit)
            edited = stacked_default(run, vectors, float(budget))
            for amount in amounts:  # the adapter is injected into `model` itself, so the gates are written beside it
                row = fixed_row(run, lambda s, gates=gates: with_gates(model, gates, s), amount)
                rows.append({"method": f"default at KL {budget} with {label}", **row})
                rows[-1]["seconds"], start = round(time.perf_counter() - start), time.perf_counter()
                print(rows[-1], flush=True)
            edited.unload()
            continue
        elif variant.startswith(("fit:", "fitorder:", "fitdir:")):
            gates, amounts, label = variant_plan(run, vectors, variant)
            for amount in amounts:
                row = fixed_row(run, lambda s, gates=gates: with_gates(model, gates, s), amount)
                rows.append({"method": label, **row, "layers": [layer for layer, *_ in gates]})
                rows[-1]["seconds"] = round(time.perf_counter() - start)
                print(rows[-1], flush=True)
                start = time.perf_counter()
            continue  # each amount's row is printed with its own time
        elif variant == "neurons":
            plan = neuron_plan(stats, vectors, DEFAULTS.first_edited_layer(model.config.num_hidden_layers))
            row = calibrated_row(run, lambda s, plan=plan: with_neurons(model, plan, s), args.budget)
            rows.append({"method": f"neurons (top {NEURONS})", **row})
        elif variant.startswith("alphasteer:"):
            _, first, last, share = variant.split(":")
            steer = alphasteer_plan(stats, vectors, range(int(first), int(last) + 1), float(share))
            row = calibrated_row(run, lambda s, steer=steer: with_alphasteer(model, steer, s), args.budget)
            rows.append({"method": f"AlphaSteer rank one {variant[11:]}", **row})
        else:
            first, last, threshold, sharpness = variant.split(":")
            layers = range(int(first), int(last) + 1)
            if threshold.startswith("q"):
                gates = quantile_plan(run, stats, vectors, layers, float(threshold[1:]), float(sharpness))
            else:
                gates = gate_plan(model, stats, vectors, layers, float(threshold), float(sharpness))
            row = calibrated_row(run, lambda s, gates=gates: with_gates(model, gates, s), args.budget)
            rows.append({"method": f"gates {variant}", **row, "layers": [layer for layer, *_ in gates]})
        rows[-1]["seconds"] = round(time.perf_counter() - start)
        print(rows[-1], flush=True)
    save_results(
        args.name,
        {
            "command": " ".join(["python", *sys.argv]),
            "budget": args.budget,
            "sets": {k: len(v) for k, v in run.sets.items()},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
