"""Every script in examples/ runs on a tiny checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from peft import PeftConfig
from tiny_models import save_tiny_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), "llama", num_hidden_layers=6))


def test_every_example_has_a_test():
    tested = {"refusal_edit", "concise_edit", "apply_saved_edit", "moe_edit"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_refusal_edit_then_apply_saved_edit(checkpoint, tmp_path):
    rates = load_example("refusal_edit").main(
        ["--model", checkpoint, "--output", str(tmp_path / "edit"), "--num-prompts", "2", "--max-new-tokens", "3"]
    )
    assert set(rates) == {"refusal_before", "refusal_after", "over_refusal_after"}
    assert all(0.0 <= value <= 1.0 for value in rates.values())
    assert PeftConfig.from_pretrained(tmp_path / "edit").peft_type == "STEER2EDIT"

    answers = load_example("apply_saved_edit").main(
        [str(tmp_path / "edit"), "--model", checkpoint, "--per-kind", "2", "--max-new-tokens", "3"]
    )
    assert list(answers) == ["harmful", "borderline", "benign"]
    assert all(list(a) == ["base", "edit", "merged"] and all(len(r) == 2 for r in a.values()) for a in answers.values())


def test_concise_edit(checkpoint, tmp_path):
    summary = load_example("concise_edit").main(
        ["--model", checkpoint, "--output", str(tmp_path), "--num-questions", "2", "--max-new-tokens", "4"]
    )
    assert summary["kl_from_base"] >= 0 and summary["mean_length_before"] > 0
    assert (tmp_path / "adapter_config.json").is_file()


def test_moe_edit_on_a_tiny_mixture_of_experts(tmp_path):
    from families import tiny_family_model
    from tiny_models import byte_tokenizer

    folder = tmp_path / "moe"
    tiny_family_model("qwen3_moe", vocab_size=260, max_position_embeddings=1024).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    summary = load_example("moe_edit").main(
        [str(folder), "--dtype", "float32", "--pairs", "4", "--reference", "3", "--max-kl", "0.01",
         "--output", str(tmp_path / "out")]
    )  # fmt: skip
    assert summary["fused_experts_modules"] == 2 and summary["edited_expert_neurons"] > 0
    assert summary["reload_max_abs_logit_diff"] == 0 and summary["merge_max_abs_logit_diff"] < 1e-4
    assert (tmp_path / "out" / "lora" / "adapter_config.json").is_file()
