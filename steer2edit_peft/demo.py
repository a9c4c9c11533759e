"""The main job: edit a model's behaviour end to end and show what changed and what it cost.

probe data (the model's own responses) + utility data (its own answers to benign prompts) -> extract ->
calibrated solve (the strongest edit within a KL budget) -> sanity check -> evaluate base, activation steering
at the same KL, the edit unmerged -> save -> reload -> merge -> evaluate merged -> table, heatmap, chart, JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .calibration import largest_within
from .data import ContrastiveDataset, UtilityData, builtin_heldout
from .evaluation.suite import (
    Condition,
    EvaluationPrompts,
    EvaluationResult,
    combined,
    evaluate_conditions,
    results_table,
)
from .extraction import extract_steering_vectors
from .generation import generate_responses
from .likelihood import KLMeter
from .models import EMBEDDED_MODEL, load_model
from .probes import builtin_prompts, generate_utility_data, shipped_file
from .probes.generate import builtin_probe_data
from .sanity import check_sanity
from .solver import default_first_layer, edit_model
from .steering import steer
from .sweep import edit_config_from
from .vectors import SteeringVectors

DEMO_BEHAVIOURS = ("refusal", "concise")


@dataclass
class DemoSettings:
    model: str = EMBEDDED_MODEL
    behaviour: str = "refusal"  # a built-in behaviour with held-out prompts: "refusal" or "concise"
    output: Path = Path("outputs/demo")
    max_kl: float = 0.02  # the edit's budget: mean per-token KL from the base model on the utility data
    # The elastic net's threshold rho*alpha fixes which components are edited; calibration fixes the scale.
    rho_attn: float | None = 0.3
    rho_mlp: float | None = None
    alpha: float = 0.6
    first_layer: int | None = None  # None: the upper 60% of the layers (see solver.default_first_layer)
    key_direction: str = "contrast"
    input_positions: str = "decision"  # where the solver reads the inputs: the last prompt token
    max_head_share: float | None = 0.2
    max_neuron_share: float | None = 0.02
    steering_strength: float | None = None  # None: the strength whose KL matches the edit's
    num_eval: int = 30  # held-out prompts of each kind
    max_new_tokens: int = 32
    # 96: a condition's 90 held-out prompts in one generation batch, 1.6x faster than batches of 32 on 2 cores;
    # teacher-forced KL runs in batches of at most 32, which measured faster than 64 (benchmarks/generation.py)
    batch_size: int = 96
    dtype: str = "bfloat16"
    seed: int = 0
    plots: bool = True
    probe: ContrastiveDataset | None = field(default=None, repr=False)  # instead of the model's own responses
    # Loader of (model, tokenizer); tests pass tiny models here.
    loader: Callable[[str, torch.dtype], tuple[Any, Any]] = field(default=load_model, repr=False)


@dataclass
class DemoOutcome:
    results: list[EvaluationResult]
    table: str
    steering_strength: float
    adapter_dir: Path
    reload_max_abs_diff: float
    reload_same_answers: bool
    merge_max_abs_diff: float
    calibration: str
    seconds: dict[str, float]
    files: list[Path]


def evaluation_prompts(behaviour: str, num_eval: int) -> EvaluationPrompts:
    """Held-out prompts for a built-in behaviour (never probed); benign and borderline ones for over-refusal."""
    refusal = builtin_heldout("refusal")
    attribute = refusal["harmful"] if behaviour == "refusal" else builtin_heldout(behaviour)["questions"]
    return EvaluationPrompts(
        attribute=attribute[:num_eval],
        benign=refusal["benign"][:num_eval],
        borderline=builtin_prompts("borderline")[:num_eval] if behaviour == "refusal" else [],
    )


def demo_probe(
    model: Any, tokenizer: Any, behaviour: str, output: Path, batch_size: int, previous: Path | None = None
) -> ContrastiveDataset:
    """The model's own responses to the behaviour's built-in prompts: shipped for the embedded model, else sampled
    (or read from ``previous``, an earlier run's folder, when they were sampled there for the same request)."""
    name = f"probe-{behaviour}.jsonl"
    earlier = [previous / name] if previous is not None and (previous / name).is_file() else []
    return builtin_probe_data(model, tokenizer, behaviour, batch_size=batch_size, cache=output / name, reuse=earlier)


def demo_utility(
    model: Any, tokenizer: Any, output: Path, batch_size: int, previous: Path | None = None
) -> UtilityData:
    shipped = shipped_file(model, "utility")
    earlier = [previous / "utility.jsonl"] if previous is not None and (previous / "utility.jsonl").is_file() else []
    return generate_utility_data(
        model,
        tokenizer,
        builtin_prompts("benign"),
        batch_size=batch_size,
        cache=output / "utility.jsonl",
        reuse=([shipped] if shipped else []) + earlier,
    )


def match_steering_strength(
    model: Any, vectors: SteeringVectors, meter: KLMeter, target_kl: float, reference: Callable[[], Any]
) -> float:
    """The strength of activation steering on every layer (attention and MLP outputs) whose KL on the utility data
    (as ``meter`` measures it) matches ``target_kl``: the same search as calibration's."""
    strength, _ = largest_within(
        lambda s: meter(model, combined(reference, lambda: steer(model, vectors, s))), target_kl, max_scale=256.0
    )
    return strength


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> DemoOutcome:
    """Run the demo; its files go to a staging folder that replaces ``settings.output`` whole at the end, so an
    interrupted or failed run leaves an earlier output folder as it was (its sampled probe data is reused)."""
    from dataclasses import replace

    from .files import atomic_folder

    if settings.behaviour not in DEMO_BEHAVIOURS:
        raise ValueError(f"the demo shows {DEMO_BEHAVIOURS}, not {settings.behaviour!r}")
    final = Path(settings.output).absolute()
    previous = final if final.is_dir() else None
    with atomic_folder(final) as staging:
        outcome = _run_demo_into(settings, staging, previous, log)
    return replace(
        outcome,
        adapter_dir=final / "adapter",
        files=[final / path.relative_to(staging) for path in outcome.files],
    )


def _run_demo_into(
    settings: DemoSettings, output: Path, previous: Path | None, log: Callable[[str], None]
) -> DemoOutcome:
    from peft import PeftModel

    from .files import atomic_folder

    torch.manual_seed(settings.seed)
    dtype = getattr(torch, settings.dtype)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    log(f"[1/7] loading {settings.model} ({settings.dtype})")
    model, tokenizer = settings.loader(settings.model, dtype)
    stage("load")

    probe = settings.probe or demo_probe(model, tokenizer, settings.behaviour, output, settings.batch_size, previous)
    utility = demo_utility(model, tokenizer, output, settings.batch_size, previous)
    log(f"[2/7] extracting steering vectors from {probe}, with {len(utility.prompts)} benign prompts as reference")
    vectors = extract_steering_vectors(
        model,
        tokenizer,
        probe,
        batch_size=16,
        reference=(utility.prompts, utility.responses),
        input_positions=settings.input_positions,
    )
    stage("probe and extract")

    num_layers = int(vectors.model_signature.get("num_hidden_layers") or model.config.num_hidden_layers)
    first_layer = default_first_layer(num_layers) if settings.first_layer is None else settings.first_layer
    config = edit_config_from(
        {
            "rho_attn": settings.rho_attn,
            "rho_mlp": settings.rho_mlp,
            "alpha": settings.alpha,
            "first_layer": first_layer,
            "key_direction": settings.key_direction,
        },
        num_layers,
    )
    log(f"[3/7] solving the strongest edit within KL {settings.max_kl:g} (layers {first_layer}-{num_layers - 1})")
    # The base model's distributions on the utility data, computed once for calibration and for the steering match.
    meter = KLMeter(model, tokenizer, utility.prompts, utility.responses, batch_size=min(settings.batch_size, 32))
    peft_model = edit_model(
        model,
        vectors,
        config,
        behaviour=settings.behaviour,
        max_kl=settings.max_kl,
        utility=utility,
        tokenizer=tokenizer,
        max_head_share=settings.max_head_share,
        max_neuron_share=settings.max_neuron_share,
        kl_meter=meter,
    )
    calibration = peft_model.calibrations["default"]
    report = peft_model.edit_reports["default"]
    log(calibration.summary())
    log(report.to_table(edited_only=True))
    check_sanity(peft_model, tokenizer, utility.prompts[:8], max_new_tokens=settings.max_new_tokens)
    stage("calibrate and solve")

    prompts = evaluation_prompts(settings.behaviour, settings.num_eval)
    base = Condition("base", peft_model, peft_model.disable_adapter)

    def evaluate(conditions: list[Condition], reference_benign: list[str] | None = None) -> list[EvaluationResult]:
        return evaluate_conditions(
            conditions,
            tokenizer,
            prompts,
            reference=base,
            reference_benign=reference_benign,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
        )

    log(f"[4/7] evaluating base and Steer2Edit on {prompts.describe()} held-out prompts")
    base_result, edit_result = evaluate([base, Condition("Steer2Edit", peft_model)])
    stage("evaluate base and edit")

    strength = settings.steering_strength
    if strength is None:
        log(f"[5/7] activation steering of every layer at the edit's KL on the utility data ({calibration.kl:.4f})")
        strength = match_steering_strength(peft_model, vectors, meter, calibration.kl, peft_model.disable_adapter)
    else:
        log(f"[5/7] activation steering of every layer at strength {strength}")
    steering = Condition(
        f"steering x{strength:.2f}",
        peft_model,
        combined(peft_model.disable_adapter, lambda: steer(peft_model, vectors, strength)),
    )
    (steering_result,) = evaluate([steering], base_result.benign_responses)
    stage("steering")

    log("[6/7] saving the adapter, reloading it with PeftModel.from_pretrained, merging it")
    adapter_dir = output / "adapter"
    peft_model.save_pretrained(str(adapter_dir), save_embedding_layers=False)  # the edit never touches embeddings
    fresh, _ = settings.loader(settings.model, dtype)
    reloaded = PeftModel.from_pretrained(fresh, adapter_dir)
    check = tokenizer(prompts.benign[:4], return_tensors="pt", padding=True)
    real = check["attention_mask"].bool()  # padded positions carry no meaning

    def logits(candidate: Any) -> torch.Tensor:
        with torch.no_grad():
            return candidate(**check).logits.float()[real]

    original_logits = logits(peft_model)
    reload_diff = float((logits(reloaded) - original_logits).abs().max())

    def answers(candidate: Any) -> list[str]:  # one batch for both, so padding and rounding are the same
        return generate_responses(
            candidate, tokenizer, prompts.attribute[:4], max_new_tokens=settings.max_new_tokens, show_progress=False
        )

    reload_same = answers(peft_model) == answers(reloaded)
    merged = reloaded.merge_and_unload()
    merge_diff = float((logits(merged) - original_logits).abs().max())
    stage("save, reload, merge")

    log("[7/7] evaluating the merged model")
    (merged_result,) = evaluate([Condition("Steer2Edit merged", merged)], base_result.benign_responses)
    stage("evaluate merged")

    results = [base_result, steering_result, edit_result, merged_result]
    columns = (
        ["refusal_rate", "over_refusal", "borderline_refusal", "kl_from_reference", "mean_length"]
        if settings.behaviour == "refusal"
        else ["mean_length", "kl_from_reference", "over_refusal"]
    )
    table = results_table(results, columns)
    files = [adapter_dir]
    with atomic_folder(output / "figures") as figures:
        if settings.plots:
            from .plots import plot_edit_heatmap, plot_metrics, save_figure

            save_figure(plot_edit_heatmap(report, f"{settings.behaviour} edit"), figures / "edit_heatmap.png")
            save_figure(plot_metrics(results, {c: c.replace("_", " ") for c in columns[:3]}), figures / "metrics.png")
    if settings.plots:
        files += [output / "figures" / "edit_heatmap.png", output / "figures" / "metrics.png"]
    outcome = DemoOutcome(
        results=results,
        table=table,
        steering_strength=strength,
        adapter_dir=adapter_dir,
        reload_max_abs_diff=reload_diff,
        reload_same_answers=reload_same,
        merge_max_abs_diff=merge_diff,
        calibration=calibration.summary(),
        seconds=seconds,
        files=files,
    )
    summary = {
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items() if k not in ("probe", "loader")
        },
        "probe": probe.description,
        "calibration": asdict(calibration),
        "steering_strength": strength,
        "edited_heads": report.edited_heads,
        "total_heads": report.total_heads,
        "edited_neurons": report.edited_neurons,
        "total_neurons": report.total_neurons,
        "reload_max_abs_logit_diff": reload_diff,
        "reload_same_answers": reload_same,
        "merged_max_abs_logit_diff": merge_diff,
        "seconds": seconds,
        "results": [asdict(r) for r in results],
        "prompts": asdict(prompts),
    }
    (output / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    files.append(output / "results.json")
    return outcome
