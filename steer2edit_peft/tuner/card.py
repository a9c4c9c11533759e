"""The model card of a Steer2Edit adapter (README.md): written by every save and pushed to the Hub with the adapter."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from .report import EditReport, read_adapter_config

# The line every card of ours carries (see the template): a save rewrites a README.md only when it holds it.
OWN_CARD_MARK = "<!-- steer2edit-peft model card"

BEHAVIOUR_DESCRIPTIONS = {
    "refusal": "The edit makes the model refuse harmful requests more often (probe: the model's own refusals vs its "
    "own compliant answers to the same harmful requests).",
    "concise": "The edit makes the model answer more briefly (probe: short vs long answers to the same questions).",
    "truthfulness": "The edit moves the model towards true answers (probe: true vs false answers to the same "
    "questions).",
}


def model_card(
    folder: str | Path,
    repo_id: str | None = None,
    results: str | None = None,
    license: str = "apache-2.0",
    heatmap: bool = False,
) -> Any:
    """The model card of the saved adapter in ``folder``: metadata, settings, edited components, usage.

    ``repo_id``: where users load it from (the Hub repository; the folder's path when None).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    config = read_adapter_config(folder)
    report = EditReport.from_adapter_folder(folder)
    behaviour = config.get("behaviour") or "unnamed behaviour"
    recorded = config.get("base_model_name_or_path")
    base_model = recorded or "a model without a name (a custom module)"
    tags = ["steer2edit", "behaviour-edit", "peft", "training-free"] + ([behaviour] if config.get("behaviour") else [])
    # PEFT's convention: the card names a base model only where one is known.
    card_data = ModelCardData(base_model=recorded, library_name="peft", tags=tags, license=license)
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
    template = files("steer2edit_peft.tuner") / "model_card_template.md"
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        title=f"{behaviour} edit of {recorded.split('/')[-1] if recorded else 'a custom model'} (Steer2Edit)",
        base_model=base_model,
        known_base=bool(recorded),
        repo_id=repo_id or "path/to/this/adapter",
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
        heatmap=heatmap,
    )


def is_own_card(path: Path) -> bool:
    """Whether the README.md at ``path`` is a card a save of ours wrote (and may rewrite)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return OWN_CARD_MARK in handle.read(4096)
    except OSError:
        return False


def adapter_folders(saved: Path) -> list[Path]:
    """The Steer2Edit adapter folders of a save: ``saved`` itself (the default adapter) and its named subfolders."""
    candidates = [saved, *sorted(path for path in saved.iterdir() if path.is_dir())]
    return [path for path in candidates if (path / "adapter_config.json").is_file() and _is_steer2edit(path)]


def _is_steer2edit(folder: Path) -> bool:
    from .config_rules import read_config_file

    return read_config_file(folder / "adapter_config.json").get("peft_type") == "STEER2EDIT"
