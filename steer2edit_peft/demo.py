"""The main job: edit a model's behaviour end to end and show what changed and what it cost.

probe data (the model's own responses) + utility data (its own answers to benign prompts) -> extract ->
calibrated solve (the strongest edit within a KL budget) -> sanity check -> evaluate base, activation steering
at the same KL, the edit unmerged -> save -> reload -> merge -> evaluate merged -> table, heatmap, chart, JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .core.architectures import num_layers
from .core.files import staged
from .core.generation import generate_responses
from .core.likelihood import KLMeter
from .core.models import EMBEDDED_MODEL, dtype_name, load_model, resolve_dtype
from .core.settings import DEFAULTS, EVALUATED_BEHAVIOURS, EditSettings, defaults_for
from .evaluation.prompts import EvaluationPrompts, evaluation_prompts
from .evaluation.suite import Condition, EvaluationResult, combined, evaluate_conditions, results_table
from .extraction import SteeringVectors, extract_steering_vectors, steer
from .extraction.steering import steered_modules
from .probes import ContrastiveDataset, UtilityData, builtin_probe_data
from .probes.generate import reference_data
from .solver import check_sanity, edit_model, kl_meter, largest_within

DEMO_BEHAVIOURS = EVALUATED_BEHAVIOURS


@dataclass
class DemoSettings:
    model: str = EMBEDDED_MODEL
    behaviour: str = "refusal"  # a built-in behaviour with held-out prompts: "refusal" or "concise"
    output: Path = Path("outputs/demo")
    edit: EditSettings | None = None  # how the edit is extracted, solved, calibrated; None: defaults_for(behaviour)
    steering_strength: float | None = None  # None: the strength whose KL matches the edit's
    num_eval: int = 30  # held-out prompts of each kind
    max_new_tokens: int = 32
    # 96: a condition's 90 held-out prompts in one generation batch, 1.6x faster than batches of 32 on 2 cores;
    # teacher-forced KL runs in batches of at most 32, which measured faster than 64 (benchmarks/generation.py)
    batch_size: int = 96
    dtype: str = "auto"  # bfloat16 where the hardware computes in it natively, else float32
    seed: int = 0
    plots: bool = True
    probe: ContrastiveDataset | None = field(default=None, repr=False)  # instead of the model's own responses
    reference: UtilityData | None = field(default=None, repr=False)  # instead of its own answers to edit.reference
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


def _earlier(previous: Path | None, name: str) -> list[Path]:
    """An earlier run's copy of ``name``, if there is one, to reuse what it sampled."""
    return [previous / name] if previous is not None and (previous / name).is_file() else []


def demo_probe(
    model: Any, tokenizer: Any, behaviour: str, output: Path, batch_size: int, previous: Path | None = None
) -> ContrastiveDataset:
    """The model's own responses to the behaviour's built-in prompts: shipped for the embedded model, else sampled
    (or read from ``previous``, an earlier run's folder, when they were sampled there for the same request)."""
    name = f"probe-{behaviour}.jsonl"
    return builtin_probe_data(
        model, tokenizer, behaviour, batch_size=batch_size, cache=output / name, reuse=_earlier(previous, name)
    )


def demo_utility(
    model: Any,
    tokenizer: Any,
    output: Path,
    batch_size: int,
    previous: Path | None = None,
    sets: tuple[str, ...] = DEFAULTS.reference,
) -> UtilityData:
    """The model's own answers to the reference prompt sets: shipped for the embedded model, else generated."""
    return reference_data(model, tokenizer, sets, batch_size=batch_size, cache=output, reuse=previous)


def match_steering_strength(
    model: Any,
    vectors: SteeringVectors,
    meter: KLMeter,
    target_kl: float,
    reference: Callable[[], Any] = nullcontext,
    modules: str | Sequence[str] | None = None,
) -> float:
    """The strength of activation steering (of every layer's attention and MLP outputs, or of ``modules`` as
    ``steer`` takes them) whose KL on the utility data (as ``meter`` measures it) matches ``target_kl``: the same
    search as calibration's; ``reference``: the context in which ``model`` is the base model."""
    # The search starts where the vectors added over every steered module sum to one steering vector: at strength 1
    # that sum is n of them and far over any budget, which costs the search one or two more measurements.
    strength, _ = largest_within(
        lambda s: meter(model, combined(reference, lambda: steer(model, vectors, s, modules))),
        target_kl,
        start=1.0 / len(steered_modules(vectors, modules)),
        max_scale=256.0,
    )
    return strength


def run_demo(settings: DemoSettings, log: Callable[[str], None] = print) -> DemoOutcome:
    """Run the demo; its files go to a staging folder of its own inside ``settings.output`` and are moved into place
    at the end (core/files.py), so an interrupted or failed run leaves an earlier run's files as they were (its
    sampled probe data is reused) and other files of the folder are never touched."""
    if settings.behaviour not in DEMO_BEHAVIOURS:
        raise ValueError(f"the demo shows {DEMO_BEHAVIOURS}, not {settings.behaviour!r}")
    from .core.quiet import quiet_warnings

    quiet_warnings()
    final = Path(settings.output).absolute()
    previous = final if final.is_dir() else None
    with staged(final) as staging:
        run = _DemoRun(settings, staging, previous, log)
        outcome = run.outcome()
    return replace(
        outcome,
        adapter_dir=final / "adapter",
        files=[final / path.relative_to(staging) for path in outcome.files],
    )


class _DemoRun:
    """One run of the demo, a method per stage; each stage's seconds are recorded under its name."""

    def __init__(self, settings: DemoSettings, output: Path, previous: Path | None, log: Callable[[str], None]):
        self.settings, self.output, self.previous, self.log = settings, output, previous, log
        self.edit = settings.edit or defaults_for(settings.behaviour)
        self.seconds: dict[str, float] = {}
        self.dtype = resolve_dtype(settings.dtype)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)

    def outcome(self) -> DemoOutcome:
        torch.manual_seed(self.settings.seed)
        with self.stage("load"):
            self.log(f"[1/7] loading {self.settings.model} ({dtype_name(self.dtype)})")
            self.model, self.tokenizer = self.settings.loader(self.settings.model, self.dtype)
            self.edit.first_edited_layer(num_layers(self.model))  # a bad first layer is named before any data is read
        with self.stage("probe and extract"):
            self.extract()
        with self.stage("calibrate and solve"):
            self.solve()
        self.prompts = evaluation_prompts(self.settings.behaviour, self.settings.num_eval)
        self.base = Condition("base", self.peft_model, self.peft_model.disable_adapter)
        with self.stage("evaluate base and edit"):
            self.log(f"[4/7] evaluating base and Steer2Edit on {self.prompts.describe()} held-out prompts")
            self.base_result, self.edit_result = self.evaluate([self.base, Condition("Steer2Edit", self.peft_model)])
        with self.stage("steering"):
            self.steering_result = self.steering()
        with self.stage("save, reload, merge"):
            merged = self.save_reload_merge()
        with self.stage("evaluate merged"):
            self.log("[7/7] evaluating the merged model")
            (merged_result,) = self.evaluate([Condition("Steer2Edit merged", merged)], self.base_result)
        return self.write([self.base_result, self.steering_result, self.edit_result, merged_result])

    def extract(self) -> None:
        s = self.settings
        probe = s.probe or demo_probe(self.model, self.tokenizer, s.behaviour, self.output, s.batch_size, self.previous)
        self.probe = probe
        self.utility = s.reference or demo_utility(
            self.model, self.tokenizer, self.output, s.batch_size, self.previous, self.edit.reference
        )
        self.log(
            f"[2/7] extracting steering vectors from {probe}, with {len(self.utility.prompts)} reference prompts "
            f"({'given' if s.reference else ' + '.join(self.edit.reference)})"
        )
        self.vectors = extract_steering_vectors(
            self.model,
            self.tokenizer,
            probe,
            batch_size=16,
            reference=(self.utility.prompts, self.utility.responses),
            positions=self.edit.positions,
            input_positions=self.edit.input_positions,
        )

    def solve(self) -> None:
        s, layers = self.settings, num_layers(self.model)
        first = self.edit.first_edited_layer(layers)
        self.log(f"[3/7] solving the strongest edit within KL {self.edit.max_kl:g} (layers {first}-{layers - 1})")
        # The base model's distributions on the reference answers kl_meter keeps, computed once for calibration and
        # the steering match.
        self.meter = kl_meter(self.model, self.tokenizer, self.utility, batch_size=min(s.batch_size, 32))
        self.peft_model = edit_model(
            self.model,
            self.vectors,
            self.edit,
            behaviour=s.behaviour,
            utility=self.utility,
            tokenizer=self.tokenizer,
            kl_meter=self.meter,
        )
        self.calibration = self.peft_model.calibrations["default"]
        self.report = self.peft_model.edit_reports["default"]
        self.log(self.calibration.summary())
        self.log(self.report.to_table(edited_only=True))
        check_sanity(self.peft_model, self.tokenizer, self.utility.prompts[:8], max_new_tokens=s.max_new_tokens)

    def evaluate(self, conditions: list[Condition], reference_result: EvaluationResult | None = None) -> list[Any]:
        return evaluate_conditions(
            conditions,
            self.tokenizer,
            self.prompts,
            reference=self.base,
            reference_result=reference_result,
            max_new_tokens=self.settings.max_new_tokens,
            batch_size=self.settings.batch_size,
        )

    def steering(self) -> EvaluationResult:
        model, strength = self.peft_model, self.settings.steering_strength
        if strength is None:
            self.log(
                "[5/7] activation steering of every layer at the edit's KL on the same reference answers "
                f"({self.calibration.kl:.4f})"
            )
            strength = match_steering_strength(
                model, self.vectors, self.meter, self.calibration.kl, model.disable_adapter
            )
        else:
            self.log(f"[5/7] activation steering of every layer at strength {strength}")
        self.strength = strength
        steering = combined(model.disable_adapter, lambda: steer(model, self.vectors, strength))
        (result,) = self.evaluate([Condition(f"steering x{strength:.2f}", model, steering)], self.base_result)
        return result

    def save_reload_merge(self) -> Any:
        from peft import PeftModel

        self.log("[6/7] saving the adapter, reloading it with PeftModel.from_pretrained, merging it")
        self.adapter_dir = self.output / "adapter"
        self.peft_model.save_pretrained(str(self.adapter_dir), save_embedding_layers=False)  # embeddings untouched
        fresh, _ = self.settings.loader(self.settings.model, self.dtype)
        reloaded = PeftModel.from_pretrained(fresh, self.adapter_dir)
        check = self.tokenizer(self.prompts.benign[:4], return_tensors="pt", padding=True)
        real = check["attention_mask"].bool()  # padded positions carry no meaning

        def logits(candidate: Any) -> torch.Tensor:
            with torch.no_grad():
                return candidate(**check).logits.float()[real]

        def answers(candidate: Any) -> list[str]:  # one batch for both, so padding and rounding are the same
            asked = self.prompts.attribute[:4]
            return generate_responses(
                candidate, self.tokenizer, asked, max_new_tokens=self.settings.max_new_tokens, show_progress=False
            )

        original = logits(self.peft_model)
        self.reload_diff = float((logits(reloaded) - original).abs().max())
        self.reload_same = answers(self.peft_model) == answers(reloaded)
        merged = reloaded.merge_and_unload()
        self.merge_diff = float((logits(merged) - original).abs().max())
        return merged

    def columns(self) -> list[str]:
        if self.settings.behaviour == "refusal":
            return [
                "refusal_rate",
                "over_refusal",
                "borderline_refusal",
                "benign_changed",
                "borderline_changed",
                "kl_from_reference",
                "mean_length",
            ]
        return ["mean_length", "kl_from_reference", "over_refusal", "benign_changed"]

    def write(self, results: list[EvaluationResult]) -> DemoOutcome:
        files = [self.adapter_dir] + self.figures(results)
        (self.output / "results.json").write_text(
            json.dumps(self.summary(results), indent=2, ensure_ascii=False) + "\n"
        )
        files.append(self.output / "results.json")
        return DemoOutcome(
            results=results,
            table=results_table(results, self.columns()),
            steering_strength=self.strength,
            adapter_dir=self.adapter_dir,
            reload_max_abs_diff=self.reload_diff,
            reload_same_answers=self.reload_same,
            merge_max_abs_diff=self.merge_diff,
            calibration=self.calibration.summary(),
            seconds=self.seconds,
            files=files,
        )

    def figures(self, results: list[EvaluationResult]) -> list[Path]:
        figures = self.output / "figures"
        if self.settings.plots:
            from .core.figures import save_figure
            from .evaluation.plots import plot_metrics
            from .tuner.heatmap import plot_edit_heatmap

            save_figure(plot_edit_heatmap(self.report, f"{self.settings.behaviour} edit"), figures / "edit_heatmap.png")
            labels = {c: c.replace("_", " ") for c in self.columns()[:3]}
            save_figure(plot_metrics(results, labels), figures / "metrics.png")
        names = ("edit_heatmap.png", "metrics.png") if self.settings.plots else ()
        return [self.output / "figures" / name for name in names]

    def summary(self, results: list[EvaluationResult]) -> dict[str, Any]:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()}
        settings["dtype"] = dtype_name(self.dtype)  # what "auto" resolved to on this machine
        settings["edit"] = asdict(self.edit)  # what None resolved to for the behaviour
        report = self.report
        return {
            "settings": {k: v for k, v in settings.items() if k not in ("probe", "reference", "loader")},
            "probe": self.probe.description,
            "calibration": asdict(self.calibration),
            "steering_strength": self.strength,
            "edited_heads": report.edited_heads,
            "total_heads": report.total_heads,
            "edited_neurons": report.edited_neurons,
            "total_neurons": report.total_neurons,
            "reload_max_abs_logit_diff": self.reload_diff,
            "reload_same_answers": self.reload_same,
            "merged_max_abs_logit_diff": self.merge_diff,
            "seconds": self.seconds,
            "results": [asdict(r) for r in results],
            "prompts": asdict(self.prompts),
        }


__all__ = [
    "DEMO_BEHAVIOURS",
    "DemoOutcome",
    "DemoSettings",
    "EvaluationPrompts",
    "demo_probe",
    "demo_utility",
    "evaluation_prompts",
    "match_steering_strength",
    "run_demo",
]
