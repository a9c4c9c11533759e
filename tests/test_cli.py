"""The `steer2edit` command line."""

from __future__ import annotations

import subprocess
import sys

import torch
from peft import get_peft_model
from tiny_models import tiny_model

from steer2edit_peft import Steer2EditConfig
from steer2edit_peft.cli import main


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "steer2edit_peft.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "inspect" in result.stdout


def test_inspect_reads_a_saved_adapter_without_a_model(tmp_path, capsys):
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False, behaviour="test"))
    peft_model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    components = peft_model.peft_config["default"].edited_components["model.layers.0.self_attn.o_proj"][0]
    assert "behaviour: test" in output
    assert "model.layers.0.self_attn.o_proj" in output and ", ".join(map(str, sorted(components))) in output


def test_inspect_a_folder_without_an_adapter_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err
