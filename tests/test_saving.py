"""A save owns only what it writes: each file whole, the config last, nothing else in the folder touched; a reader
never loads a mix of two saves, and an interrupted save never loads as another edit."""

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
    base = tiny_model("llama")  # seeds itself: the edit's own seed comes after
    torch.manual_seed(seed)
    model = get_peft_model(base, Steer2EditConfig(init_weights=False))
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
    import steer2edit_peft.core.files as files

    place = files._place

    def die_before(temporary, destination, overwrite):  # killed as {stop!r} is about to be moved into place
        if str(destination) == os.path.join({folder!r}, {stop!r}):
            os.kill(os.getpid(), signal.SIGKILL)
        place(temporary, destination, overwrite)

    files._place = die_before
    base = tiny_model("llama")
    torch.manual_seed(1)
    get_peft_model(base, Steer2EditConfig(init_weights=False)).save_pretrained({folder!r})
    """
)


def interrupted_save(folder: Path, stop: str) -> None:
    script = INTERRUPTED_SAVE.format(tests=str(TESTS), folder=str(folder), stop=stop)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr


def visible_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_a_save_interrupted_before_any_file_is_placed_leaves_the_previous_adapter(tmp_path):
    folder = tmp_path / "adapter"
    previous = adapter(0)
    previous.save_pretrained(folder)
    files = visible_files(folder)
    interrupted_save(folder, "adapter_model.safetensors")
    assert visible_files(folder) == files
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_model("llama"), folder)), logits(previous))


def test_a_save_interrupted_between_its_files_never_loads_as_another_edit(tmp_path):
    folder = tmp_path / "adapter"
    adapter(0).save_pretrained(folder)
    interrupted_save(folder, "adapter_config.json")  # the new weights are in place, the old config beside them
    model = tiny_model("llama")
    before = logits(model)
    with pytest.raises(AdapterValidationError, match="a save was interrupted"):
        PeftModel.from_pretrained(model, folder)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


def test_a_failed_save_into_a_new_folder_leaves_no_folder_behind(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "mine.txt").write_text("mine")

    def failing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("steer2edit_peft.core.files.publish", failing)
    with pytest.raises(OSError, match="disk full"):
        adapter(0).save_pretrained(tmp_path / "a" / "b" / "c")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["mine.txt"]  # b and c were made by the save, and went


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
    assert not [p for p in folder.rglob(".*")], "no temporary file or folder is left behind"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_save_changes_nothing_it_did_not_write(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("elsewhere")
    os.chmod(outside, 0o640)
    folder = tmp_path / "adapter"
    folder.mkdir()
    os.chmod(folder, 0o750)
    (folder / "notes.txt").write_text("private")
    os.chmod(folder / "notes.txt", 0o600)
    (folder / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(folder / "run.sh", 0o700)
    (folder / "link.txt").symlink_to(outside)
    (folder / "data").mkdir()
    (folder / "data" / "train.jsonl").write_text("{}\n")
    os.mkfifo(folder / "pipe")
    before = {
        p: (p.lstat().st_mode, p.lstat().st_ino, p.read_bytes() if p.is_file() else None)
        for p in [
            outside,
            folder,
            folder / "notes.txt",
            folder / "run.sh",
            folder / "link.txt",
            folder / "data",
            folder / "data" / "train.jsonl",
            folder / "pipe",
        ]
        if not stat.S_ISFIFO(p.lstat().st_mode)
    }
    fifo = (folder / "pipe").lstat()
    adapter(0).save_pretrained(folder)  # a FIFO in the folder would hang any code that reads every entry
    adapter(1).save_pretrained(folder)
    after = {p: (p.lstat().st_mode, p.lstat().st_ino, p.read_bytes() if p.is_file() else None) for p in before}
    assert after == before
    assert (folder / "pipe").lstat().st_ino == fifo.st_ino
    written = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.name.startswith("adapter_")}
    assert written == {name: 0o666 & ~umask() for name in ("adapter_config.json", "adapter_model.safetensors")}


def test_a_save_into_the_working_directory_keeps_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inode = os.stat(".").st_ino
    adapter(0).save_pretrained(".")
    assert os.getcwd() == str(tmp_path) and os.stat(".").st_ino == inode
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_model("llama"), ".")), logits(adapter(0)))


def test_a_symlinked_folder_is_written_through(tmp_path):
    real = tmp_path / "scratch" / "adapter"
    real.mkdir(parents=True)
    link = tmp_path / "adapter"
    link.symlink_to(real, target_is_directory=True)
    adapter(0).save_pretrained(link)
    assert link.is_symlink() and (real / "adapter_config.json").is_file()
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_model("llama"), link)), logits(adapter(0)))


def test_files_another_process_writes_during_saves_survive(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    stop = threading.Event()
    written: list[Path] = []

    def keep_writing():
        while not stop.is_set():
            path = folder / f"log-{len(written)}.txt"
            path.write_text(str(len(written)))
            written.append(path)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        for seed in range(3):
            adapter(seed).save_pretrained(folder)
    finally:
        stop.set()
        writer.join()
    assert written and all(path.read_text() == str(i) for i, path in enumerate(written))


def test_the_saved_readme_is_the_projects_model_card_but_a_users_readme_is_kept(tmp_path):
    folder = tmp_path / "adapter"
    adapter(0).save_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert "import steer2edit_peft" in card and "pip install steer2edit-peft" in card and "export-lora" in card
    assert "More Information Needed" not in card  # PEFT's empty template
    adapter(1).save_pretrained(folder)  # our own card is ours to rewrite
    assert "import steer2edit_peft" in (folder / "README.md").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    adapter(0).save_pretrained(mine)
    assert (mine / "README.md").read_text() == "# my notes\n"


def test_library_writers_refuse_files_they_would_replace_and_leave_the_rest(tmp_path):
    from steer2edit_peft.export import to_lora
    from steer2edit_peft.extraction import SteeringVectors

    model = adapter(0)
    vectors = SteeringVectors.from_directions({"model.layers.0.mlp.down_proj": torch.ones(32)})
    writers = {
        "to_lora": (lambda folder, **kw: to_lora(model, output=folder, **kw), "adapter_config.json"),
        "SteeringVectors.save": (lambda folder, **kw: vectors.save(folder, **kw), "steering_vectors.safetensors"),
    }
    for name, (write, owned) in writers.items():
        folder = tmp_path / name
        (folder / "data").mkdir(parents=True)
        (folder / "train.py").write_text("print('mine')\n")
        (folder / "data" / "rows.jsonl").write_text("{}\n")
        write(folder)  # files of other names: written beside them
        assert (folder / "train.py").read_text() == "print('mine')\n" and (folder / "data" / "rows.jsonl").exists()
        with pytest.raises(Steer2EditError, match=f"already holds .*{owned}.*overwrite=True"):
            write(folder)
        write(folder, overwrite=True)
        assert (folder / "train.py").exists() and (folder / owned).exists(), name


def test_pickled_saves_are_refused(tmp_path):
    with pytest.raises(Steer2EditError, match="safetensors only"):
        adapter(0).save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert not (tmp_path / "adapter").exists()


def test_the_config_records_the_digest_of_the_weights_beside_it(tmp_path):
    from safetensors.torch import load_file

    from steer2edit_peft.tuner.checkpoint import tensor_digest
    from steer2edit_peft.tuner.config_rules import read_config_file

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
