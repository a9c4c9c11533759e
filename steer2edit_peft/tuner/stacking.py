"""A Steer2Edit edit stacked on other PEFT adapters: in a ``PeftMixedModel``, or onto a LoRA ``PeftModel``.

PEFT keeps one adapter type per ``PeftModel`` and lists the types its ``PeftMixedModel`` accepts in module
constants, dispatching layer creation by config class. :func:`install` adds Steer2Edit there (as this package
already adds it to ``PeftType``), and teaches ``PeftModel.load_adapter`` to add an edit to a LoRA model as its
exact LoRA. Each change acts on Steer2Edit adapters only; on a PEFT whose internals moved, nothing is patched and
a Steer2Edit adapter in a mixed model is refused with one clear error.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Union

from ..core.errors import Steer2EditError
from ..core.experts import is_fused_experts
from .checkpoint import PEFT_PREFIX, WEIGHTS_NAME, by_module, check_weights_fit
from .config import Steer2EditConfig, loaded_weights
from .config_rules import CONFIG_NAME, saved_peft_type
from .lora_equivalent import equivalent_lora_config, lora_factors
from .model import Steer2EditModel
from .targets import expected_tensor_shapes, resolve_config

logger = logging.getLogger("steer2edit_peft")

_MIXED_INTERNALS = ("COMPATIBLE_TUNER_TYPES", "PREFIXES", "Configs", "Layers", "MixedModel")
_PATCHED_MARK = "__steer2edit_stacking__"


def mixed_model_problem() -> str | None:
    """Why this PEFT's mixed model cannot take Steer2Edit adapters, or None when it can."""
    from peft.tuners.mixed import model as mixed

    missing = [name for name in _MIXED_INTERNALS if not hasattr(mixed, name)]
    if not missing and "_create_and_replace" not in vars(mixed.MixedModel):
        missing.append("MixedModel._create_and_replace")
    if missing:
        return (
            f"this PEFT's mixed-model internals changed (peft.tuners.mixed.model lacks {', '.join(missing)}), so "
            "steer2edit-peft cannot add Steer2Edit to PeftMixedModel; export the edit with to_lora "
            "(`steer2edit export-lora`) and mix that LoRA instead"
        )
    return None


def _marked(wrapper: Any) -> Any:
    setattr(wrapper, _PATCHED_MARK, True)
    return wrapper


def _install_mixed_model() -> None:
    from peft import PeftMixedModel
    from peft.mapping import PEFT_TYPE_TO_MIXED_MODEL_MAPPING
    from peft.utils import PeftType

    from .layer import Steer2EditLayer

    problem = mixed_model_problem()
    if problem is not None:
        _refuse_in_mixed_models(PeftMixedModel, problem)
        return
    package: Any = importlib.import_module("peft.tuners.mixed")  # Any: its constants are extended below
    mixed: Any = importlib.import_module("peft.tuners.mixed.model")
    peft_type = PeftType.STEER2EDIT  # type: ignore[attr-defined]
    if peft_type not in mixed.COMPATIBLE_TUNER_TYPES:
        mixed.COMPATIBLE_TUNER_TYPES = (*mixed.COMPATIBLE_TUNER_TYPES, peft_type)
        package.COMPATIBLE_TUNER_TYPES = mixed.COMPATIBLE_TUNER_TYPES  # PeftMixedModel reads it from the package
    if Steer2EditModel.prefix not in mixed.PREFIXES:
        mixed.PREFIXES.append(Steer2EditModel.prefix)
    if Steer2EditConfig not in mixed.Configs.__args__:
        mixed.Configs = Union[(*mixed.Configs.__args__, Steer2EditConfig)]  # noqa: UP007 - PEFT reads __args__
    if Steer2EditLayer not in mixed.Layers:
        mixed.Layers = (*mixed.Layers, Steer2EditLayer)
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING[peft_type] = Steer2EditModel
    owner: Any = mixed.MixedModel
    if getattr(owner._create_and_replace, _PATCHED_MARK, False):
        return
    create, inject = owner._create_and_replace, owner.inject_adapter

    @functools.wraps(create)
    def _create_and_replace(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(config, Steer2EditConfig):
            return Steer2EditModel._create_and_replace(self, config, *args, **kwargs)
        return create(self, config, *args, **kwargs)

    @functools.wraps(inject)
    def inject_adapter(self: Any, model: Any, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        config = self.peft_config[adapter_name]
        if isinstance(config, Steer2EditConfig):  # the same checks, before anything changes, as Steer2EditModel's
            try:
                Steer2EditModel._check_before_injection(self, model, config, kwargs.get("state_dict"))
            except Exception:
                self.peft_config.pop(adapter_name, None)
                raise
        return inject(self, model, adapter_name, *args, **kwargs)

    owner._create_and_replace = _marked(_create_and_replace)
    owner.inject_adapter = _marked(inject_adapter)


def _refuse_in_mixed_models(mixed_class: Any, problem: str) -> None:
    init = mixed_class.__init__
    if getattr(init, _PATCHED_MARK, False):
        return

    @functools.wraps(init)
    def __init__(self: Any, model: Any, peft_config: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(peft_config, Steer2EditConfig):
            raise Steer2EditError(problem)
        init(self, model, peft_config, *args, **kwargs)

    mixed_class.__init__ = _marked(__init__)


# ---------------------------------------------------------------- an edit loaded onto a LoRA PeftModel


def exact_lora_of_saved_edit(config: Steer2EditConfig, model: Any) -> tuple[Any, dict[str, Any]]:
    """(LoraConfig, state dict) of the LoRA equal to a saved, validated edit, for ``model`` (checked against it)."""
    import torch

    weights = loaded_weights(config)
    if weights is None:
        raise Steer2EditError("the Steer2Edit config was not read with Steer2EditConfig.from_pretrained")
    resolve_config(config, model)
    grouped = by_module(weights)
    check_weights_fit(grouped, expected_tensor_shapes(config, model))
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for module, tensors in sorted(grouped.items()):
        if not tensors["steer2edit_indices"].numel():
            continue
        target = model.get_submodule(module)
        if is_fused_experts(target):
            raise Steer2EditError(
                f"{module}: an edit of fused experts joins a LoRA model in a PeftMixedModel "
                "(PeftMixedModel.from_pretrained, then load_adapter), not as a LoRA of this PeftModel"
            )
        lora_a, lora_b = lora_factors(tensors, config.strength, target.in_features)
        ranks[module] = lora_a.shape[0]
        state[f"{PEFT_PREFIX}{module}.lora_A.weight"] = lora_a
        state[f"{PEFT_PREFIX}{module}.lora_B.weight"] = lora_b
    if not ranks:
        raise Steer2EditError("the Steer2Edit adapter edits no component: there is nothing to add")
    lora = equivalent_lora_config(ranks, config.fan_in_fan_out, config.base_model_name_or_path, config.task_type)
    return lora, state


def _load_adapter_onto_other_types(original: Any) -> Any:
    @functools.wraps(original)
    def load_adapter(self: Any, model_id: Any, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
        from peft import PeftModel

        existing = {str(getattr(c.peft_type, "value", c.peft_type)) for c in self.peft_config.values()}
        if not isinstance(self, PeftModel) or not existing:  # PeftMixedModel calls this too: it mixes itself
            return original(self, model_id, adapter_name, *args, **kwargs)
        incoming = saved_peft_type(str(model_id), kwargs)
        if incoming == "STEER2EDIT" and "STEER2EDIT" not in existing:
            if existing != {"LORA"}:
                raise Steer2EditError(
                    f"this PeftModel holds {sorted(existing)} adapters; a Steer2Edit edit joins a LoRA model as its "
                    "exact LoRA, and any other type in a PeftMixedModel (PeftMixedModel.from_pretrained, then "
                    "load_adapter)"
                )
            return _load_as_lora(original, self, str(model_id), adapter_name, *args, **kwargs)
        if existing == {"STEER2EDIT"} and incoming not in (None, "STEER2EDIT"):
            raise Steer2EditError(
                f"this PeftModel holds Steer2Edit adapters and PEFT keeps one adapter type per PeftModel, so the "
                f"{incoming} adapter {model_id} cannot join it: load the {incoming} adapter first and the edit after it "
                "(the edit then joins as its exact LoRA), or stack both in a PeftMixedModel"
            )
        return original(self, model_id, adapter_name, *args, **kwargs)

    return load_adapter


def _load_as_lora(original: Any, model: Any, source: str, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
    from safetensors.torch import save_file

    hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir", "subfolder") if kwargs.get(key)}
    subfolder = hub_kwargs.pop("subfolder", None)
    config = Steer2EditConfig.from_pretrained(source, subfolder=subfolder, **hub_kwargs)
    lora, state = exact_lora_of_saved_edit(config, model.base_model.model)
    for key in ("revision", "token", "cache_dir", "subfolder"):
        kwargs.pop(key, None)
    with tempfile.TemporaryDirectory(prefix="steer2edit-lora-") as folder:
        lora.save_pretrained(folder)
        save_file(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})
        result = original(model, folder, adapter_name, *args, **kwargs)
    logger.warning(
        "steer2edit: %s is a Steer2Edit edit; added to this LoRA model as adapter %r, its exact LoRA (%d modules)",
        source,
        adapter_name,
        len(lora.target_modules),
    )
    return result


def save_adapters(model: Any, directory: str | os.PathLike[str], overwrite: bool = False) -> dict[str, Path]:
    """Save every adapter of a ``PeftMixedModel`` (which PEFT cannot save) to ``directory/<name>``, each in its own
    format, each file whole and the config last (core/files.py); each folder loads back with ``from_pretrained`` /
    ``load_adapter``. Files of those names already there are refused unless ``overwrite``."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from ..core.files import refuse_existing, staged

    for name in model.peft_config:
        refuse_existing(Path(directory) / name, (WEIGHTS_NAME, CONFIG_NAME), overwrite)
    folders = {}
    for name, config in model.peft_config.items():
        state = get_peft_model_state_dict(model, adapter_name=name)
        with staged(Path(directory) / name, overwrite) as staging:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(staging / WEIGHTS_NAME))
            config.save_pretrained(str(staging))  # a Steer2Edit config records the digest of the weights beside it
        folders[name] = Path(directory) / name
    return folders


def install() -> None:
    """Add Steer2Edit to PeftMixedModel and to PeftModel.load_adapter (idempotent)."""
    from peft import PeftModel

    _install_mixed_model()
    if not getattr(PeftModel.load_adapter, _PATCHED_MARK, False):
        PeftModel.load_adapter = _marked(_load_adapter_onto_other_types(PeftModel.load_adapter))  # type: ignore[method-assign]
