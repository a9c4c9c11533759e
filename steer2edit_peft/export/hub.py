"""Sharing edits on the Hugging Face Hub: model cards from export/model_card_template.md, push and load helpers.

Loading needs nothing special: after ``import steer2edit_peft``, ``PeftModel.from_pretrained(base, "user/repo",
revision=...)`` works like for any adapter, also from the local cache with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..core.quiet import quiet_peft_wrapping
from ..tuner.report import EditReport, read_adapter_config

BEHAVIOUR_DESCRIPTIONS = {
    "refusal": "The edit makes the model refuse harmful requests more often (probe: the model's own refusals vs its "
    "own compliant answers to the same harmful requests).",
    "concise": "The edit makes the model answer more briefly (probe: short vs long answers to the same questions).",
    "truthfulness": "The edit moves the model towards true answers (probe: true vs false answers to the same "
    "questions).",
}


def model_card(folder: str | Path, repo_id: str, results: str | None = None, license: str = "apache-2.0") -> Any:
    """The model card of the saved adapter in ``folder``: metadata, settings, edited components, usage."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = read_adapter_config(folder)
    report = EditReport.from_adapter_folder(folder)
    behaviour = config.get("behaviour") or "unnamed behaviour"
    base_model = config.get("base_model_name_or_path") or "unknown"
    tags = ["steer2edit", "behaviour-edit", "peft", "training-free"] + ([behaviour] if config.get("behaviour") else [])
    card_data = ModelCardData(base_model=base_model, library_name="peft", tags=tags, license=license)
    rows = [
        {
            "layer": m.layer if m.layer is not None else "-",
            "module": m.module,
            "edited": f"{m.num_edited}/{m.num_components}",
            "max_lambda": f"{m.max_magnitude:.4f}",
            "top": ", ".join(f"{i}: {v:+.3f}" for i, v in m.components[:4]),
        }
        for m in report.modules
    ]
    layers = config.get("layers_to_transform")
    template = files("steer2edit_peft.export") / "model_card_template.md"
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        title=f"{behaviour} edit of {base_model.split('/')[-1]} (Steer2Edit)",
        base_model=base_model,
        repo_id=repo_id,
        behaviour=behaviour,
        behaviour_description=BEHAVIOUR_DESCRIPTIONS.get(behaviour, ""),
        edited_heads=report.edited_heads,
        edited_neurons=report.edited_neurons,
        rho_attn=config.get("rho_attn"),
        rho_mlp=config.get("rho_mlp"),
        alpha=config.get("alpha"),
        strength=config.get("strength"),
        layers="all" if not layers else f"{min(layers)}-{max(layers)}" if isinstance(layers, list) else layers,
        probe_data=config.get("probe_data") or "not recorded",
        key_direction=config.get("key_direction"),
        input_positions=config.get("input_positions") or "not recorded",
        library_version=config.get("library_version"),
        format_version=config.get("format_version"),
        components=rows,
        results=results,
    )


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
        model_card(folder, repo_id, results).save(staged / "README.md")
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
