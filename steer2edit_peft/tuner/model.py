"""Steer2EditModel: PEFT's BaseTuner for Steer2Edit adapters."""

from __future__ import annotations

import copy
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core.errors import AdapterValidationError, UnknownArchitectureError, refuse_reload
from ..core.experts import is_fused_experts
from .checkpoint import MAX_EDIT_MAGNITUDE, PEFT_PREFIX, by_module, check_weights, check_weights_fit, split_key
from .config import Steer2EditConfig, loaded_weights, was_loaded
from .config_rules import MAX_STRENGTH
from .experts import Experts
from .layer import Linear, Steer2EditLayer, offload_execution_device
from .targets import base_layer_of, editable, expected_tensor_shapes, module_shapes, resolve_config

refuse_reload(globals())


def remove_adapter_layers(model: nn.Module, adapter_name: str) -> None:
    """Take an adapter's layers back out of ``model``, restoring wrapped modules it alone created."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, Steer2EditLayer) or adapter_name not in module.steer2edit_u:
            continue
        if set(module.steer2edit_u.keys()) == {adapter_name}:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, module.base_layer)
        else:
            module.delete_adapter(adapter_name)


def _layers(model: nn.Module, adapter_name: str) -> dict[str, Steer2EditLayer]:
    return {
        name.removeprefix(PEFT_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, Steer2EditLayer) and adapter_name in module.steer2edit_u
    }


class Steer2EditModel(BaseTuner):
    """Applies Steer2Edit adapters (sparse component-level rank-1 edits) to a transformers model."""

    prefix: str = "steer2edit_"
    tuner_layer_cls = Steer2EditLayer
    target_module_mapping: dict[str, list[str]] = {}  # found by structure (resolve_config), not looked up

    def inject_adapter(
        self, model: nn.Module, adapter_name: str, *args: Any, state_dict: Any = None, **kwargs: Any
    ) -> None:
        # Everything is checked before any module is replaced, so a bad adapter leaves the model as it was.
        try:
            self._check_before_injection(model, self._config(adapter_name), state_dict)
        except (AdapterValidationError, UnknownArchitectureError):
            self.peft_config.pop(adapter_name, None)  # PeftModel.load_adapter registers the config first
            raise
        super().inject_adapter(model, adapter_name, *args, state_dict=state_dict, **kwargs)  # type: ignore[misc]

    def _check_before_injection(self, model: nn.Module, config: Steer2EditConfig, state_dict: Any) -> None:
        resolve_config(config, model)
        shapes = expected_tensor_shapes(config, model)
        if not shapes:
            raise ValueError(f"no module of the model matches target_modules={config.target_modules!r}")
        weights = loaded_weights(config)
        if weights is not None:  # read and checked by Steer2EditConfig.from_pretrained
            check_weights_fit(by_module(weights), shapes)

    def _place_module(self, parent: nn.Module, child_name: str, new_module: Any, child: Any) -> None:
        # PEFT parks adapter tensors on the base weight's device, "meta" for an offloaded layer, which would
        # drop their values. The edit's tensors are small: they stay on the layer's execution device.
        device = offload_execution_device(child.get_base_layer() if isinstance(child, BaseTunerLayer) else child)
        if device is None or not isinstance(new_module, Steer2EditLayer):
            return super()._replace_module(parent, child_name, new_module, child)
        kept = {
            name: {key: value.detach().to(device) for key, value in getattr(new_module, name).items()}
            for name in ("steer2edit_u", "steer2edit_k", "steer2edit_lambda", "steer2edit_indices", "steer2edit_term")
        }
        super()._replace_module(parent, child_name, new_module, child)
        for name, values in kept.items():
            container = getattr(new_module, name)
            for key, value in values.items():
                container[key] = nn.Parameter(value) if value.is_floating_point() else value

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        assert isinstance(peft_config, Steer2EditConfig)
        base = base_layer_of(target)
        if not editable(base):
            raise TypeError(
                f"{current_key}: Steer2Edit edits nn.Linear, transformers Conv1D and fused-experts modules, not "
                f"{type(base).__name__}"
            )
        is_conv1d = isinstance(base, Conv1D)
        peft_config.fan_in_fan_out = peft_config.fan_in_fan_out or is_conv1d
        component_size = peft_config.component_size(current_key)
        layer_kwargs: dict[str, Any] = dict(
            component_size=component_size,
            # A saved adapter lists every module it edits; a fresh one starts where it lists nothing.
            components=peft_config.edited_components.get(current_key, [[]] if was_loaded(peft_config) else None),
            strength=peft_config.strength,
            init_weights=peft_config.init_weights,
            inference_mode=peft_config.inference_mode,
        )
        if isinstance(target, Steer2EditLayer):
            components = target.update_layer(adapter_name, module_name=current_key, **layer_kwargs)  # type: ignore[arg-type]
        else:
            new_module: Steer2EditLayer
            if is_fused_experts(base):
                new_module = Experts(target, adapter_name, module_name=current_key, **layer_kwargs)
            else:
                new_module = Linear(
                    target, adapter_name, fan_in_fan_out=is_conv1d, module_name=current_key, **layer_kwargs
                )  # type: ignore[arg-type]
            components = new_module.recorded_components
            self._replace_module(parent, target_name, new_module, target)
        if any(components):
            peft_config.edited_components[current_key] = components

    def _config(self, adapter_name: str) -> Steer2EditConfig:
        config = self.peft_config[adapter_name]
        assert isinstance(config, Steer2EditConfig)
        return config

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        assert isinstance(config, Steer2EditConfig)
        validated = loaded_weights(config)
        if validated is not None:
            # Load exactly the tensors from_pretrained checked, not PEFT's second read of the file, which a
            # concurrent save could have replaced in between.
            extra = {key: value for key, value in state_dict.items() if split_key(key) is None}
            state_dict = {**extra, **validated}
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        # A digest the config records binds these weights too when they were not checked with it already (a config
        # built from a file's JSON by hand); saved module copies are renamed on the way in, so only edits qualify.
        digest = config.tensor_digest if validated is None and not config.modules_to_save else None
        try:
            cls._load_layout(model, config, adapter_name, remapped, digest)
        except AdapterValidationError:
            remove_adapter_layers(model, adapter_name)
            getattr(model, "peft_config", {}).pop(adapter_name, None)
            raise
        return remapped

    @staticmethod
    def _load_layout(
        model: nn.Module,
        config: Steer2EditConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        digest: str | None = None,
    ) -> None:
        """Check a state dict and give every layer the components it lists (a state dict is self-contained)."""
        ours = {key: value for key, value in state_dict.items() if split_key(key, adapter_name) is not None}
        layers = _layers(model, adapter_name)
        if was_loaded(config):
            edited = config.edited_components  # a file: its config must describe the tensors exactly
        else:
            grouped = by_module(ours, adapter_name)
            edited = {}
            for module, tensors in grouped.items():
                indices, terms = tensors.get("steer2edit_indices"), tensors.get("steer2edit_term")
                if indices is None or terms is None or module not in layers:
                    continue
                rebuilt: list[list[int]] = [[] for _ in range(int(tensors["steer2edit_u"].shape[0]))]
                for index, term in zip(indices.tolist(), terms.tolist()):
                    if not 0 <= term < len(rebuilt):
                        raise AdapterValidationError(f"{module}: component term {term} out of range")
                    rebuilt[term].append(index)
                edited[module] = rebuilt
        grouped = check_weights(
            ours, edited, config.strength, digest, "the adapter state dict", adapter_name, config.modules_to_save
        )
        shapes = {}
        for module, layer in layers.items():
            layout = edited.get(module, [[]])
            shapes[module] = module_shapes(config, module, layer.in_features, layer.out_features, layout)
        check_weights_fit(grouped, shapes)
        for module, layer in layers.items():
            layout = edited.get(module, [[]])
            if layer.components(adapter_name) != layout:
                layer.update_layer(
                    adapter_name,
                    component_size=layer.component_size[adapter_name],
                    components=layout,
                    strength=layer.strength[adapter_name],
                    init_weights=True,
                    module_name=module,
                    inference_mode=config.inference_mode,
                )
            if any(layout):
                config.edited_components[module] = layout
            else:
                config.edited_components.pop(module, None)

    def set_strength(self, strength: float, adapter_name: str | None = None) -> None:
        """Set the runtime multiplier of an adapter (default: the active ones) on every layer.

        Refused (nothing changes) unless finite and within the bounds of docs/FORMAT.md.
        """
        names = [adapter_name] if adapter_name else self.active_adapters
        for name in names:
            value = self._config(name).check_strength(strength)
            if abs(value) > self.largest_strength(name):
                raise AdapterValidationError(
                    f"set_strength({strength!r}) would move the weights of adapter {name!r} by more than the bound "
                    f"{MAX_EDIT_MAGNITUDE:g}: its largest strength is {self.largest_strength(name):.4g}"
                )
        for name in names:
            self._config(name).strength = float(strength)
            for module in _layers(self.model, name).values():
                module.set_strength(name, strength)

    def largest_strength(self, adapter_name: str) -> float:
        """The largest |strength| the adapter takes: MAX_STRENGTH, or less where its largest component would then
        move its weights by more than MAX_EDIT_MAGNITUDE."""
        layers = _layers(self.model, adapter_name).values()
        largest = max((m.largest_component_magnitude(adapter_name) for m in layers), default=0.0)
        # A hair under the bound: the saved tensors, rounded to their dtype, must still pass loading's check.
        return min(MAX_STRENGTH, 0.999 * MAX_EDIT_MAGNITUDE / largest) if largest > 0 else MAX_STRENGTH

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: Any, child: Any) -> None:
        if new_module is base_layer_of(child):  # unloading: the very module the layer wrapped goes back in place
            setattr(parent, child_name, new_module)
            return
        self._place_module(parent, child_name, new_module, child)

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        """A new adapter equal to ``sum_i weights[i] * adapters[i]``, exactly: terms are concatenated.

        Per module, only the adapters that hold a layer there contribute, and empty terms are left out, so every
        tensor of the combination is built to its exact shape (adapters may target different modules)."""
        if len(adapters) != len(weights) or not adapters:
            raise ValueError("add_weighted_adapter needs one weight per adapter")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists")
        configs = [self._config(name) for name in adapters]
        head_dims = {c.head_dim for c in configs if c.head_dim is not None}
        if len(head_dims) > 1 or len({tuple(sorted(c.head_dims.items())) for c in configs if c.head_dim}) > 1:
            raise ValueError(f"add_weighted_adapter needs adapters with the same head sizes, got {sorted(head_dims)}")
        terms: dict[str, tuple[list[list[int]], torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for module, layer in _all_layers(self.model).items():
            scale = [(name, w * layer.strength[name]) for name, w in zip(adapters, weights) if name in layer.strength]
            if scale:
                combined_terms = _concatenated_terms(layer, scale)
                if combined_terms[0]:
                    terms[module] = combined_terms
        if not terms:
            raise ValueError(f"the adapters {adapters} edit no component: there is nothing to combine")
        combined = copy.deepcopy(configs[0])
        combined.target_modules = sorted(terms)  # exact module names: only where some adapter edits
        combined.layers_to_transform = None
        combined.layers_pattern = None
        for family in ("attention_modules", "mlp_modules"):
            names = sorted({name for c in configs for name in getattr(c, family) or []})
            setattr(combined, family, names or None)
        combined.head_dim = next(iter(head_dims), None)
        combined.head_dims = next((dict(c.head_dims) for c in configs if c.head_dim), {})
        combined.init_weights = True
        combined.strength = 1.0
        combined.behaviour = " + ".join(f"{w:g}*{c.behaviour or n}" for n, c, w in zip(adapters, configs, weights))
        combined.edited_components = {module: layout for module, (layout, _, _, _) in terms.items()}
        self.peft_config[adapter_name] = combined
        self.inject_adapter(self.model, adapter_name)
        for module, layer in _layers(self.model, adapter_name).items():
            _, u, k, magnitudes = terms[module]
            with torch.no_grad():
                layer.steer2edit_u[adapter_name].copy_(u)
                layer.steer2edit_k[adapter_name].copy_(k)
                layer.steer2edit_lambda[adapter_name].copy_(magnitudes)


def _all_layers(model: nn.Module) -> dict[str, Steer2EditLayer]:
    return {
        name.removeprefix(PEFT_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(module, Steer2EditLayer)
    }


def _concatenated_terms(
    layer: Steer2EditLayer, scale: list[tuple[str, float]]
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layout, u, k, lambda) of ``sum factor * edit[name]`` over ``scale`` on one layer, non-empty terms only."""
    layout: list[list[int]] = []
    us, ks, magnitudes = [], [], []
    for name, factor in scale:
        term = layer.steer2edit_term[name]
        order = torch.argsort(term, stable=True)  # components term by term, as a layout lists them
        kept = sorted(set(term.tolist()))
        per_term = layer.components(name)
        layout += [per_term[t] for t in kept]
        us.append(layer.steer2edit_u[name].detach()[kept])
        ks.append(layer.steer2edit_k[name].detach()[order])
        magnitudes.append(factor * layer.steer2edit_lambda[name].detach()[order])
    return layout, torch.cat(us), torch.cat(ks), torch.cat(magnitudes)
