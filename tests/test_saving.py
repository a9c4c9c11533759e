"""Saves are whole: a reader never loads a mix of two saves, an interrupted save leaves the previous adapter intact,
other files in the folder survive, and every file gets one mode."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import sample_input, tiny_model

from steer2edit_peft import AdapterValidationError, Steer2EditConfig
from steer2edit_peft.core.errors import Steer2EditError
from steer2edit_peft.tuner import Steer2EditLayer

TESTS = Path(__file__).resolve().parent


def adapter(seed: int, scale: float = 1.0):
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Steer2EditLayer):
                module.steer2edit_lambda["default"].mul_(scale)
    return model


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(sample_input()).logits


def test_a_reader_never_loads_a_mix_of_two_saves(tmp_path):
    # Two adapters with the same component layout (so shapes alone cannot tell them apart) and one with another.
    candidates = [adapter(0), adapter(0, scale=-2.0), adapter(1)]
    expected = [logits(c) for c in candidates]
    folder = tmp_path / "adapter"
    candidates[0].save_pretrained(folder)
    stop = threading.Event()

    def keep_saving():
        turn = 0
        while not stop.is_set():
            candidates[turn % 3].save_pretrained(folder)
            turn += 1

    writer = threading.Thread(target=keep_saving)
    writer.start()
    loads = mixes = refusals = 0
    try:
        for _ in range(40):
            try:
                loaded = PeftModel.from_pretrained(tiny_model("llama"), folder)
            except AdapterValidationError:
                refusals += 1
                continue
            loads += 1
            result = logits(loaded)
            if not any(torch.equal(result, e) for e in expected):
                mixes += 1
    finally:
        stop.set()
        writer.join()
    assert mixes == 0
    assert loads >= 30, f"only {loads} of 40 loads succeeded ({refusals} refused)"


INTERRUPTED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from peft import get_peft_model
    from tiny_models import tiny_model
    from steer2edit_peft import Steer2EditConfig
    from steer2edit_peft.tuner.config import Steer2EditConfig as Config

    def die(*args, **kwargs):  # killed after the weights are written, before the config is
        os.kill(os.getpid(), signal.SIGKILL)

    Config.save_pretrained = die
    torch.manual_seed(1)
    get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False)).save_pretrained({folder!r})
    """
)


def test_an_interrupted_save_leaves_the_previous_adapter_intact(tmp_path):
    folder = tmp_path / "adapter"
    previous = adapter(0)
    previous.save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    script = INTERRUPTED_SAVE.format(tests=str(TESTS), folder=str(folder))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_model("llama"), folder)), logits(previous))


def test_saving_keeps_the_other_files_of_the_folder(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    model = adapter(0)
    model.add_adapter("other", Steer2EditConfig(init_weights=False))
    model.save_pretrained(folder, selected_adapters=["other"])
    adapter(1).save_pretrained(folder)  # the default adapter, next to the named one saved before
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "other" / "adapter_config.json").is_file()
    assert (folder / "adapter_config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder is left behind"


def test_every_saved_file_has_one_mode(tmp_path):
    folder = tmp_path / "adapter"
    adapter(0).save_pretrained(folder)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_pickled_saves_are_refused(tmp_path):
    with pytest.raises(Steer2EditError, match="safetensors only"):
        adapter(0).save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert not (tmp_path / "adapter").exists()


def test_the_config_records_the_digest_of_the_weights_beside_it(tmp_path):
    from safetensors.torch import load_file

    from steer2edit_peft.tuner.checkpoint import read_config_file, tensor_digest

    folder = tmp_path / "adapter"
    adapter(0).save_pretrained(folder)
    recorded = read_config_file(folder / "adapter_config.json")["tensor_digest"]
    assert recorded == tensor_digest(load_file(folder / "adapter_model.safetensors"))


def test_tensor_digest_matches_a_slow_reference():
    import hashlib

    from steer2edit_peft.tuner.checkpoint import tensor_digest

    state = {
        "base_model.model.b.steer2edit_u": torch.tensor([[1.0, 2.0]]),
        "base_model.model.a.steer2edit_indices": torch.tensor([3], dtype=torch.int64),
    }
    reference = hashlib.sha256()
    for module, name in [("a", "steer2edit_indices"), ("b", "steer2edit_u")]:
        tensor = state[f"base_model.model.{module}.{name}"]
        reference.update(f"{module}\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        reference.update(
            b"".join(int(x).to_bytes(8, "little", signed=True) for x in tensor.view(-1).tolist())
            if tensor.dtype == torch.int64
            else tensor.numpy().tobytes()
        )
    assert tensor_digest(state) == "sha256:" + reference.hexdigest()


def test_a_save_never_asks_the_hub_about_embeddings(tmp_path, monkeypatch):
    """PEFT's save_embedding_layers="auto" looks the base config up on the Hub; an edit never targets embeddings."""
    import peft.utils.save_and_load as save_and_load

    def no_network(*args, **kwargs):
        raise AssertionError("save_pretrained asked the Hub")

    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", no_network)
    model = adapter(0)
    model.peft_config["default"].base_model_name_or_path = "someone/not-on-this-machine"
    model.save_pretrained(tmp_path / "a")
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "a")
    torch.testing.assert_close(logits(reloaded), logits(model), rtol=0, atol=0)
    with pytest.raises(AssertionError, match="asked the Hub"):  # an explicit "auto" is still PEFT's to honour
        model.save_pretrained(tmp_path / "b", save_embedding_layers="auto")
