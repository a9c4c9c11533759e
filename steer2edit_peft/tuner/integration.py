"""Where PEFT and transformers handle an adapter outside the tuner, made as strict as the tuner itself.

Installed once by :func:`install` (on import of steer2edit_peft), each wrapper changes behaviour only for
Steer2Edit adapters:

- ``PeftModel.save_pretrained``: the folder is written whole (staging folder, atomic swap), so a reader never
  sees a half-written adapter and an interrupted save leaves the previous one intact.
- transformers' ``model.load_adapter``: the adapter is read and checked by Steer2Edit first (config, weights,
  digest, fit to the model), and transformers then loads exactly the checked tensors.
- ``PeftConfig.from_json_file``: a STEER2EDIT adapter_config.json is read strictly, and a file that names no PEFT
  type (or is no JSON object) is one clear error; every other PEFT type is read by PEFT as before.
- transformers' adapter management (``set_adapter`` and the like): where it refuses this PEFT's version on a
  model that holds an edit, the error says what works instead.

Stacking with other adapter types (PeftMixedModel, an edit onto a LoRA PeftModel) is in :mod:`.stacking`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..core.errors import AdapterValidationError, Steer2EditError
from ..core.files import atomic_folder
from .checkpoint import PEFT_PREFIX, by_module, read_config_file
from .config import Steer2EditConfig
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


def _atomic_save_pretrained(original: Any) -> Any:
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
        with atomic_folder(target, keep_other_entries=True) as staging:
            readme = target / "README.md"
            if readme.is_file():  # PEFT updates an existing model card in place: give it a copy, not a link
                (staging / "README.md").write_bytes(readme.read_bytes())
            original(self, str(staging), *args, **kwargs)

    return save_pretrained


def _strict_load_adapter(original: Any) -> Any:
    @functools.wraps(original)
    def load_adapter(
        self: Any, peft_model_id: str | None = None, adapter_name: str | None = None, **kwargs: Any
    ) -> Any:
        config = kwargs.get("peft_config")
        state = kwargs.get("adapter_state_dict")
        if config is None and peft_model_id is not None and _names_steer2edit(peft_model_id, kwargs):
            hub_kwargs = {key: kwargs[key] for key in ("revision", "token", "cache_dir") if kwargs.get(key)}
            hub_kwargs.update(kwargs.get("adapter_kwargs") or {})
            config = Steer2EditConfig.from_pretrained(peft_model_id, **hub_kwargs)
            state = getattr(config, "_validated_weights", None)
            kwargs.update(peft_config=config, adapter_state_dict=dict(state or {}))
            peft_model_id = None  # everything transformers needs is passed; it reads no file itself
        if not _is_steer2edit(config):
            return original(self, peft_model_id, adapter_name, **kwargs)
        if state is None:
            raise AdapterValidationError("load_adapter with a Steer2Edit peft_config needs its adapter_state_dict")
        name = adapter_name or "default"
        result = original(self, peft_model_id, adapter_name, **kwargs)
        _check_loaded(self, name, state)
        return result

    return load_adapter


def _names_steer2edit(peft_model_id: str, kwargs: dict[str, Any]) -> bool:
    """Whether the adapter at ``peft_model_id`` (folder or Hub repo) says it is a Steer2Edit adapter."""
    from .stacking import saved_peft_type

    return saved_peft_type(peft_model_id, kwargs) == "STEER2EDIT"


def _check_loaded(model: Any, adapter_name: str, state: dict[str, Any]) -> None:
    """After transformers' loader: every layer must hold exactly the tensors that were checked."""
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
            loaded = getattr(layer, tensor)[adapter_name]
            if loaded.shape != value.shape or not torch.equal(loaded.detach().cpu().to(value.dtype), value):
                remove_adapter_layers(model, adapter_name)
                getattr(model, "peft_config", {}).pop(adapter_name, None)
                raise AdapterValidationError(f"{module}.{tensor}: transformers did not load the checked tensor")


def _clear_json_errors(original: Any) -> Any:
    """A STEER2EDIT config is read strictly; a config of any other PEFT type goes to PEFT's reader untouched. A file
    PEFT cannot read at all (not a JSON object, or no PEFT type named) gets one clear error instead of a KeyError."""

    @functools.wraps(original)
    def from_json_file(cls: Any, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
        from peft.utils import PeftType

        content = read_config_file(path_json_file)
        peft_type = content.get("peft_type")
        if not isinstance(peft_type, str) or peft_type not in PeftType.__members__:
            raise AdapterValidationError(f"{path_json_file}: peft_type must name a PEFT method, got {peft_type!r}")
        if peft_type != "STEER2EDIT" or "runtime_config" in content:
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

    _wrap(PeftModel, "save_pretrained", _atomic_save_pretrained)
    _wrap(PeftConfigMixin, "from_json_file", _clear_json_errors)
    try:
        from transformers.integrations.peft import PeftAdapterMixin
    except ImportError:  # pragma: no cover - transformers without its PEFT integration
        return
    _wrap(PeftAdapterMixin, "load_adapter", _strict_load_adapter)
    for name in _MANAGEMENT_METHODS:
        if name in PeftAdapterMixin.__dict__:
            _wrap(PeftAdapterMixin, name, _explained_version_error)
