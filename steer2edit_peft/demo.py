"""The main job: edit a model's behaviour end to end and show what changed and what it cost.

extract -> solve -> evaluate (base, activation steering at matched KL, edit unmerged) -> save -> reload
-> merge -> evaluate merged -> table, heatmap, metric chart, results.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import ContrastiveDataset, builtin_heldout, builtin_probe
from .evaluation.generation import generate_responses
from .evaluation.metrics import mean_token_kl
from .evaluation.suite import (
    Condition,
    EvaluationPrompts,
    EvaluationResult,
    combined,
    evaluate_conditions,
    results_table,
)
from .extraction import edited_modules, extract_steering_vectors
from .models import EMBEDDED_MODEL, load_model
from .solver import edit_model
from .steering import steer
from .tuner import Steer2EditConfig
from .vectors import SteeringVectors


@dataclass
class DemoSettings:
    model: str = EMBEDDED_MODEL
    behaviour: str = "refusal"  # a built-in probe set with held-out prompts: "refusal" or "concise"
    output: Path = Path("outputs/demo")
    # Chosen on SmolLM2-135M-Instruct (BENCHMARKS.md): attention heads of the upper half only, since edits in
    # the first layers of a model this small derail every answer.
    rho_attn: float | None = 0.1
    rho_mlp: float | None = None
    alpha: float = 0.6
    first_layer: int = 14  # edit layers first_layer..last; 0 edits all
    steering_strength: float | None = None  # None: the strength whose KL matches the edit's
    num_eval: int = 30  # held-out prompts of each kind
    max_new_tokens: int = 48
    batch_size: int = 16
    dtype: str = "bfloat16"
    seed: int = 0
    plots: bool = True
    probe: ContrastiveDataset | None = field(default=None, repr=False)  # instead of the built-in probe set
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
    seconds: dict[str, float]
    files: list[Path]


def edit_config(settings: DemoSettings, num_layers: int) -> Steer2EditConfig:
    from .sweep import edit_config_from

    solver = {"rho_attn": settings.rho_attn, "rho_mlp": settings.rho_mlp, "alpha": settings.alpha}
    return edit_config_from({**solver, "first_layer": settings.first_layer}, num_layers)


def evaluation_prompts(behaviour: str, num_eval: int) -> EvaluationPrompts:
    """Held-out prompts for a built-in behaviour; benign text for perplexity from the refusal probe's answers."""
    refusal = builtin_heldout("refusal")
    attribute = refusal["harmful"] if behaviour == "refusal" else builtin_heldout(behaviour)["questions"]
    texts = [f"{e.prompt}\n{e.response}" for e in builtin_probe("refusal") if not e.positive]
    return EvaluationPrompts(attribute=attribute[:num_eval], benign=refusal["benign"][:num_eval], texts=texts)


def match_steering_strength(
    model: Any,
    tokenizer: Any,
    vectors: SteeringVectors,
    modules: list[str],
    prompts: list[str],
    responses: list[str],
    target_kl: float,
    reference: Callable[[], AbstractContextManager[Any]],
    batch_size: int,
    steps: int = 7,
) -> float:
    """The activation-steering strength whose KL from the base matches ``target_kl`` (bracket, then bisect)."""

    def kl_at(strength: float) -> float:
        return mean_token_kl(
            model,
            tokenizer,
            prompts,
            responses,
            edited=combined(reference, lambda: steer(model, vectors, strength, modules)),
            reference=reference,
            batch_size=batch_size,
        )

    low, high = 0.0, 1.0
    while kl_at(high) < target_kl and high < 256:
        low, high = high, high * 2
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if kl_at(middle) < target_kl else (low, middle)
    return (low + high) / 2


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> DemoOutcome:
    from peft import PeftModel

    torch.manual_seed(settings.seed)
    dtype = getattr(torch, settings.dtype)
    output = Path(settings.output)
    output.mkdir(parents=True, exist_ok=True)
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

    probe = settings.probe or builtin_probe(settings.behaviour)
    log(f"[2/7] extracting steering vectors from {probe}")
    vectors = extract_steering_vectors(model, tokenizer, probe, batch_size=settings.batch_size)
    stage("extract")

    num_layers = vectors.model_signature.get("num_hidden_layers") or model.config.num_hidden_layers
    config = edit_config(settings, num_layers)
    log(f"[3/7] solving the edit (rho_attn={settings.rho_attn}, rho_mlp={settings.rho_mlp}, alpha={settings.alpha})")
    peft_model = edit_model(model, vectors, config, behaviour=settings.behaviour)
    report = peft_model.edit_reports["default"]
    log(report.to_table(edited_only=True))
    stage("solve")

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

    edit = Condition("Steer2Edit", peft_model)
    log(f"[4/7] evaluating base and Steer2Edit on {len(prompts.attribute)} + {len(prompts.benign)} held-out prompts")
    base_result, edit_result = evaluate([base, edit])
    stage("evaluate base and edit")

    steered_modules = list(edited_modules(model, config))
    strength = settings.steering_strength
    if strength is None:
        log(f"[5/7] finding the steering strength whose KL matches the edit's ({edit_result.kl_from_reference:.4f})")
        strength = match_steering_strength(
            peft_model,
            tokenizer,
            vectors,
            steered_modules,
            prompts.benign,
            base_result.benign_responses,
            edit_result.kl_from_reference,
            peft_model.disable_adapter,
            settings.batch_size,
        )
    else:
        log(f"[5/7] activation steering at strength {strength}")
    steering = Condition(
        f"steering x{strength:.2f}",
        peft_model,
        combined(peft_model.disable_adapter, lambda: steer(peft_model, vectors, strength, steered_modules)),
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
    check_prompts = prompts.attribute[:4]

    def answers(candidate: Any) -> list[str]:
        return generate_responses(
            candidate, tokenizer, check_prompts, max_new_tokens=settings.max_new_tokens, show_progress=False
        )

    reload_same = answers(reloaded) == answers(peft_model)
    merged = reloaded.merge_and_unload()
    merge_diff = float((logits(merged) - original_logits).abs().max())
    stage("save, reload, merge")

    log("[7/7] evaluating the merged model")
    (merged_result,) = evaluate([Condition("Steer2Edit merged", merged)], base_result.benign_responses)
    stage("evaluate merged")

    results = [base_result, steering_result, edit_result, merged_result]
    columns = (
        ["refusal_rate", "over_refusal", "kl_from_reference", "perplexity", "mean_length"]
        if settings.behaviour == "refusal"
        else ["mean_length", "kl_from_reference", "perplexity", "over_refusal"]
    )
    table = results_table(results, columns)
    files = [adapter_dir]
    if settings.plots:
        from .plots import plot_edit_heatmap, plot_metrics, save_figure

        files.append(save_figure(plot_edit_heatmap(report, f"{settings.behaviour} edit"), output / "edit_heatmap.png"))
        chosen = {c: c.replace("_", " ") for c in columns[:3]}
        files.append(save_figure(plot_metrics(results, chosen), output / "metrics.png"))
    outcome = DemoOutcome(
        results=results,
        table=table,
        steering_strength=strength,
        adapter_dir=adapter_dir,
        reload_max_abs_diff=reload_diff,
        reload_same_answers=reload_same,
        merge_max_abs_diff=merge_diff,
        seconds=seconds,
        files=files,
    )
    summary = {
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items() if k not in ("probe", "loader")
        },
        "probe": probe.description,
        "steering_strength": strength,
        "edited_heads": report.edited_heads,
        "edited_neurons": report.edited_neurons,
        "reload_max_abs_logit_diff": reload_diff,
        "reload_same_answers": reload_same,
        "merged_max_abs_logit_diff": merge_diff,
        "seconds": seconds,
        "results": [asdict(r) for r in results],
        "prompts": asdict(prompts),
    }
    (output / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    files.append(output / "results.json")
    return outcome
