"""Sharing edits on the Hugging Face Hub: push and load helpers (the model card is tuner/card.py's).

Loading needs nothing special: after ``import steer2edit_peft``, ``PeftModel.from_pretrained(base, "user/repo",
revision=...)`` works like for any adapter, also from the local cache with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..core.quiet import quiet_peft_wrapping
from ..tuner.card import model_card
from ..tuner.report import EditReport, read_adapter_config


def push_adapter_folder(
    folder: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    results: str | None = None,
    token: str | None = None,
) -> Any:
    """Upload a saved Steer2Edit adapter with its model card (README.md) and edit heatmap; returns the CommitInfo.

    Each push is a new commit: its ``oid`` is the revision to load that version again.
    """
    from huggingface_hub import HfApi

    from ..core.figures import save_figure
    from ..tuner.heatmap import plot_edit_heatmap

    folder = Path(folder)
    read_adapter_config(folder)  # a clear error for anything but a Steer2Edit adapter
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        staged = Path(staging)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (staged / name).write_bytes((folder / name).read_bytes())
        model_card(folder, repo_id, results, heatmap=True).save(staged / "README.md")
        report = EditReport.from_adapter_folder(folder)
        save_figure(plot_edit_heatmap(report), staged / "edit_heatmap.png")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            revision=revision,
            commit_message=commit_message or f"Steer2Edit adapter ({report.adapter_name})",
        )


def push_edit(model: Any, repo_id: str, adapter_name: str = "default", **kwargs: Any) -> Any:
    """Save the Steer2Edit adapter ``adapter_name`` of a PeftModel and push it with :func:`push_adapter_folder`."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[adapter_name], save_embedding_layers=False)
        folder = Path(tmp) / adapter_name if adapter_name != "default" else Path(tmp)
        return push_adapter_folder(folder, repo_id, **kwargs)


def load_edit(base_model: Any, repo_id_or_path: str, revision: str | None = None, adapter_name: str = "default") -> Any:
    """``PeftModel.from_pretrained`` of a Steer2Edit adapter on the Hub (any revision) or on disk."""
    from peft import PeftModel

    with quiet_peft_wrapping():
        return PeftModel.from_pretrained(base_model, repo_id_or_path, revision=revision, adapter_name=adapter_name)
