"""Where PEFT and transformers handle an adapter outside the tuner, made as strict as the tuner itself.

Installed once by :func:`install` (on import of steer2edit_peft), each wrapper changes behaviour only for
Steer2Edit adapters:

- ``PeftModel.save_pretrained``: the adapter is written in a staging folder of its own inside the target, and each
  file is moved into place whole, the config (which records the digest of the weights) last; nothing else in the
  folder is touched (core/files.py). The README is this project's model card, unless the folder holds a README of
  the user's, which is left as it is.
- transformers' ``model.load_adapter``: the adapter is read and checked by Steer2Edit first (config, weights,
  digest, fit to the model), and transformers then loads exactly the checked tensors.
- ``PeftConfig.from_pretrained`` (any config class's): a STEER2EDIT adapter is read as
  ``Steer2EditConfig.from_pretrained`` reads it, config and weights checked, so ``config=`` on any load path carries
  checked weights; ``PeftConfig.from_json_file`` reads a STEER2EDIT file strictly. A file of any other type, or one
  that names no type, is PEFT's to read, errors included, exactly as without this package.
- transformers' adapter management (``set_adapter`` and the like): where it refuses this PEFT's version on a
  model that holds an edit, the error says what works instead.

Stacking with other adapter types (PeftMixedModel, an edit onto a LoRA PeftModel) is in :mod:`.stacking`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import AdapterValidationError, Steer2EditError
from ..core.files import staged
from .card import adapter_folders, is_own_card, model_card
from .checkpoint import PEFT_PREFIX, by_module
from .config import Steer2EditConfig, loaded_weights
from .config_rules import HUB_ARGUMENTS, declared_peft_type, read_config_file, saved_peft_type
from .model import remove_adapter_layers

_INSTALLED_MARK = "__steer2edit_wrapped__"


def _wrap(owner: Any, name: str, make: Any) -> None:
    original = owner.__dict__[name]
    if getattr(original, _INSTALLED_MARK, False):
        return
    wrapper = make(original)
    setattr(wrapper, _INSTALLED_MARK, True)
    setattr(owner, name, wrapper)


def _is_steer2edit(config: Any) -> bool:
    return isinstance(config, Steer2EditConfig)


def _owned_save_pretrained(original: Any) -> Any:
    @functools.wraps(original)
    def save_pretrained(self: Any, save_directory: str, *args: Any, **kwargs: Any) -> None:
        selected = kwargs.get("selected_adapters") or list(self.peft_config)
        ours = any(_is_steer2edit(self.peft_config.get(name)) for name in selected)
        if not ours or not kwargs.get("is_main_process", True) or os.path.isfile(save_directory):
            return original(self, save_directory, *args, **kwargs)
        if not kwargs.get("safe_serialization", args[0] if args else True):
            raise Steer2EditError("Steer2Edit adapters are saved as safetensors only; drop safe_serialization=False")
        # An edit never targets embeddings; PEFT's "auto" would fetch the base config from the Hub to check the
        # vocabulary (a network call on every save, and a warning offline). Asking for them explicitly still works.
        if len(args) < 3:  # save_embedding_layers is PeftModel.save_pretrained's third positional parameter
            kwargs.setdefault("save_embedding_layers", False)
        target = Path(save_directory)
        with staged(target) as staging:
            original(self, str(staging), *args, **kwargs)
            card = staging / "README.md"
            if os.path.lexists(target / "README.md") and not is_own_card(target / "README.md"):
                card.unlink(missing_ok=True)  # the user's README: not ours to rewrite
            elif card.exists() and adapter_folders(staging):
                model_card(adapter_folders(staging)[0]).save(card)  # in place of PEFT's empty template

    return save_pretrained


def _strict_load_adapter(original: Any) -> Any:
    @functools.wraps(original)
    def load_adapter(
        self: Any, peft_model_id: str | None = None, adapter_name: str | None = None, **kwargs: Any
    ) -> Any:
        config: Any = kwargs.get("peft_config")
        state = kwargs.get("adapter_state_dict")
        if config is None and peft_model_id is not None:
            where = {**kwargs, **(kwargs.get("adapter_kwargs") or {})}  # a subfolder or revision may come either way
            if saved_peft_type(str(peft_model_id), where) == "STEER2EDIT":
                hub_kwargs = {key: where[key] for key in HUB_ARGUMENTS if where.get(key) is not None}
                config = Steer2EditConfig.from_pretrained(str(peft_model_id), **hub_kwargs)
        if not _is_steer2edit(config):
            return original(self, peft_model_id, adapter_name, **kwargs)
        if state is None:
            state = loaded_weights(config)
        if state is None:
            raise AdapterValidationError(
                "load_adapter with a Steer2Edit peft_config needs its adapter_state_dict, or a config read with "
                "Steer2EditConfig.from_pretrained (which holds the checked weights)"
            )
        # Everything transformers needs is passed, so it reads no file itself: it loads exactly the checked tensors.
        kwargs.update(peft_config=config, adapter_state_dict=dict(state))
        kwargs.pop("adapter_kwargs", None)
        name = adapter_name or "default"
        result = original(self, None, adapter_name, **kwargs)
        _check_loaded(self, name, state)
        return result

    return load_adapter


def _check_loaded(model: Any, adapter_name: str, state: Mapping[str, Any]) -> None:
    """After transformers' loader: every layer must hold exactly the tensors that were checked (in its own dtype:
    transformers casts an adapter to the model's dtype, as PEFT does on a bfloat16 model)."""
    import torch

    from .layer import Steer2EditLayer

    expected = by_module(state)
    layers = {
        name.removeprefix(PEFT_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, Steer2EditLayer) and adapter_name in module.steer2edit_u
    }
    for module, layer in layers.items():
        for tensor, value in expected.get(module, {}).items():
            loaded = getattr(layer, tensor)[adapter_name].detach()
            if loaded.shape != value.shape or not torch.equal(loaded.cpu(), value.to(loaded.dtype)):
                remove_adapter_layers(model, adapter_name)
                getattr(model, "peft_config", {}).pop(adapter_name, None)
                raise AdapterValidationError(f"{module}.{tensor}: transformers did not load the checked tensor")


def _routed_config_reader(original: Any) -> Any:
    """``PeftConfig.from_pretrained`` (and every config class's) of a STEER2EDIT adapter reads it as
    ``Steer2EditConfig.from_pretrained`` does: config and weights checked, digest included, the checked weights kept
    with the config for the load that follows. Any other adapter is PEFT's to read, untouched."""

    @functools.wraps(original)
    def from_pretrained(cls: Any, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any):
        if not issubclass(cls, Steer2EditConfig):
            where = {**kwargs, "subfolder": subfolder}
            if saved_peft_type(str(pretrained_model_name_or_path), where) == "STEER2EDIT":
                return Steer2EditConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return original.__func__(cls, pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    return classmethod(from_pretrained)


def _strict_json_reader(original: Any) -> Any:
    """A STEER2EDIT adapter_config.json is read strictly (one clear error naming the file); every other file is read
    by PEFT exactly as before, errors included."""

    @functools.wraps(original)
    def from_json_file(cls: Any, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
        if declared_peft_type(Path(path_json_file)) != "STEER2EDIT":
            return original.__func__(cls, path_json_file, **kwargs)
        content = read_config_file(path_json_file)
        if "runtime_config" in content:
            return original.__func__(cls, path_json_file, **kwargs)  # PEFT's behaviour, warnings included
        return content

    return classmethod(from_json_file)


def _explained_version_error(original: Any) -> Any:
    """transformers' adapter management asks for a newer PEFT than the one installed: say what works instead."""

    @functools.wraps(original)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except ValueError as error:
            configs = getattr(self, "peft_config", {}) or {}
            if "version of PEFT" not in str(error) or not any(_is_steer2edit(c) for c in configs.values()):
                raise
            raise Steer2EditError(
                f"{error}. The loaded adapters ({', '.join(configs)}) are all active, as loaded. To switch between "
                "them with this PEFT, load them into a PeftMixedModel instead: "
                "PeftMixedModel.from_pretrained(base, LORA, adapter_name='ft').load_adapter(EDIT, 'edit'), then "
                "set_adapter([...]) (docs/stacking.md)"
            ) from error

    return method


_MANAGEMENT_METHODS = ("set_adapter", "enable_adapters", "disable_adapters", "delete_adapter", "active_adapters")


def install() -> None:
    """Wrap the PEFT and transformers entry points above (idempotent)."""
    from peft import PeftModel
    from peft.config import PeftConfigMixin

    _wrap(PeftModel, "save_pretrained", _owned_save_pretrained)
    _wrap(PeftConfigMixin, "from_json_file", _strict_json_reader)
    _wrap(PeftConfigMixin, "from_pretrained", _routed_config_reader)
    try:
        from transformers.integrations.peft import PeftAdapterMixin
    except ImportError:  # pragma: no cover - transformers without its PEFT integration
        return
    _wrap(PeftAdapterMixin, "load_adapter", _strict_load_adapter)
    for name in _MANAGEMENT_METHODS:
        if name in PeftAdapterMixin.__dict__:
            _wrap(PeftAdapterMixin, name, _explained_version_error)
