"""`steer2edit lm-eval`: lm-evaluation-harness's own command line, loading a Steer2Edit adapter with peft=.

The check is end to end on a tiny local task: the per-choice log-likelihoods lm-eval reports for the base model
plus ``peft=EDIT`` equal those it reports for a plain copy of the model with the edit merged into its weights
(a model lm-eval loads without any PEFT), and differ from the base model's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tiny_models import byte_tokenizer, tiny_model
from transformers import AutoModelForCausalLM

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.cli.main import main

TASK = """task: steer2edit_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("lm_eval")
    root = tmp_path_factory.mktemp("harness")
    tokenizer = byte_tokenizer()
    # The vocabulary the tokenizer has: lm-eval resizes the embeddings of a peft= model to it, and of no other.
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "merged")
    torch.manual_seed(0)
    edited = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "model"), Steer2EditConfig(init_weights=False))
    edited.save_pretrained(root / "edit")
    merged = edited.merge_and_unload()
    merged.save_pretrained(root / "merged")
    rows = [
        {"question": f"Question {i}: which one?", "choices": [" yes", " no", " maybe"], "label": i % 3}
        for i in range(6)
    ]
    (root / "tiny.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny.yaml").write_text(TASK.format(data=root / "tiny.jsonl"))
    return root


DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluating.md"


def documented_command() -> list[str]:
    """The first command of docs/evaluating.md, as words."""
    (block,) = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)[:1]
    return shlex.split(block.strip())


def harness_logliks(root: Path, model_args: str, name: str) -> list[float]:
    """Per-choice log-likelihoods of docs/evaluating.md's command, with the tiny model, adapter and task."""
    output = root / "out" / name
    command = documented_command()
    assert command[:2] == ["steer2edit", "lm-eval"]
    documented_args = command[command.index("--model_args") + 1]
    assert documented_args.startswith("pretrained=") and ",peft=" in documented_args
    command[command.index("--model_args") + 1] = f"{model_args},dtype=float32"
    command[command.index("--tasks") + 1] = "steer2edit_tiny"
    command = [sys.executable, "-m", "steer2edit_peft.cli.main", *command[1:]]
    command += ["--include_path", str(root / "tasks"), "--output_path", str(output), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    (samples,) = output.rglob("samples_steer2edit_tiny_*.jsonl")
    records = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    records.sort(key=lambda record: record["doc_id"])
    return [float(choice[0][0]) for record in records for choice in record["resps"]]


def test_lm_eval_loads_a_steer2edit_adapter_as_peft(setup):
    with_edit = harness_logliks(setup, f"pretrained={setup / 'model'},peft={setup / 'edit'}", "edit")
    merged = harness_logliks(setup, f"pretrained={setup / 'merged'}", "merged")
    base = harness_logliks(setup, f"pretrained={setup / 'model'}", "base")
    assert len(with_edit) == len(merged) == len(base) == 18  # 6 questions x 3 choices
    assert max(abs(a - b) for a, b in zip(with_edit, merged)) < 1e-4
    assert max(abs(a - b) for a, b in zip(with_edit, base)) > 1e-3


def test_lm_eval_without_the_harness_installed_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # makes the import fail
    assert main(["lm-eval", "run", "--tasks", "x"]) == 2
    assert "pip install 'steer2edit-peft[lm-eval]'" in capsys.readouterr().err


def test_the_command_list_names_lm_eval(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "lm-eval" in capsys.readouterr().out
