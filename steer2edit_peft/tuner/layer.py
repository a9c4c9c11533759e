"""Steer2Edit tuner layers: a sparse, component-level, low-rank edit of one output projection."""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..core.errors import AdapterValidationError, refuse_reload
from ..core.experts import experts_shape, is_fused_experts

refuse_reload(globals())


def weight_in_out(module: nn.Module, fan_in_fan_out: bool) -> tuple[int, int]:
    """(in_features, out_features) of a 2-D weight stored (out, in), or (in, out) when fan_in_fan_out.

    Layers that declare ``in_features``/``out_features`` (nn.Linear, quantized linears whose packed weight
    has another shape) are taken at their word; fused experts read as [hidden, experts * neurons] (core/experts.py).
    """
    if is_fused_experts(module):
        experts, neurons, hidden = experts_shape(module)
        return experts * neurons, hidden
    if not fan_in_fan_out and isinstance(getattr(module, "in_features", None), int):
        return int(module.in_features), int(module.out_features)  # type: ignore[arg-type]
    weight = cast(torch.Tensor, module.weight)
    if weight.ndim != 2:
        raise TypeError(f"Steer2Edit edits 2-D weights; {type(module).__name__} has shape {tuple(weight.shape)}")
    rows, columns = int(weight.shape[0]), int(weight.shape[1])
    return (rows, columns) if fan_in_fan_out else (columns, rows)


def component_columns(indices: torch.Tensor, component_size: int) -> torch.Tensor:
    """Input column of every (component, offset) pair, flattened: [components * component_size]."""
    offsets = torch.arange(component_size, device=indices.device)
    return (indices[:, None] * component_size + offsets).reshape(-1)


def key_matrix(
    k: torch.Tensor,
    magnitudes: torch.Tensor,
    indices: torch.Tensor,
    term: torch.Tensor,
    terms: int,
    in_features: int,
) -> torch.Tensor:
    """K [terms, in]: row t holds lambda_c k_c on the input columns of every component c of term t, zero elsewhere.

    With u [terms, out] the edit is ``delta W = strength * u^T K``; the tensors alone (no layer) define it, so
    an edit read from a file converts to a LoRA without being applied anywhere.
    """
    component_size = k.shape[1]
    columns = component_columns(indices, component_size)
    rows = term.repeat_interleave(component_size)
    weighted = (magnitudes[:, None] * k).reshape(-1)
    key = torch.zeros(terms, in_features, dtype=k.dtype, device=k.device)
    return key.index_put((rows, columns), weighted, accumulate=True)  # terms may share columns


def offload_execution_device(base_layer: nn.Module) -> torch.device | None:
    """Where an offloaded base layer (weights on "meta", loaded by an accelerate hook) runs; None otherwise.

    The edit's small tensors live there for good, so the whole weight is never gathered for them.
    """
    weight = getattr(base_layer, "weight", None)
    if weight is None or weight.device.type != "meta":
        return None
    device = getattr(getattr(base_layer, "_hf_hook", None), "execution_device", None)  # else the block's hook loads it
    return torch.device(device) if device is not None else torch.device("cpu")


class Steer2EditLayer(BaseTunerLayer):
    """Holds, per adapter, ``terms`` rank-one edits of one module.

    Per adapter:
      - ``steer2edit_u``      [terms, out_features]      unit output direction of each term
      - ``steer2edit_k``      [components, component_size]  input direction of each edited component
      - ``steer2edit_lambda`` [components]                 magnitude of each edited component
      - ``steer2edit_indices`` [components] int64 component index (head or neuron)
      - ``steer2edit_term``    [components] int64 the term each component belongs to

    The indices are saved with the tensors (and listed in the config), so a state dict alone rebuilds the edit.
    The edit is ``delta W = strength * sum_c lambda_c u_{term(c)} k_c^T`` placed on the input columns of
    component c, so the unmerged forward adds ``strength * u * (x[cols] . k)`` and never forms a dense matrix.
    A solved or loaded edit is frozen (inference mode); in training mode u, k and lambda train like any adapter.
    """

    adapter_layer_names = ("steer2edit_u", "steer2edit_k", "steer2edit_lambda")
    other_param_names = ("steer2edit_indices", "steer2edit_term", "strength", "component_size")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.fan_in_fan_out = fan_in_fan_out
        self.steer2edit_u = nn.ParameterDict({})
        self.steer2edit_k = nn.ParameterDict({})
        self.steer2edit_lambda = nn.ParameterDict({})
        self.steer2edit_indices = BufferDict({}, persistent=True)
        self.steer2edit_term = BufferDict({}, persistent=True)
        # adapter -> (positions, values before, values written by the merge, the delta added there)
        self._premerge_values: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.strength: dict[str, float] = {}
        self.component_size: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.in_features, self.out_features = weight_in_out(base_layer, fan_in_fan_out)
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        component_size: int,
        components: list[list[int]] | None,
        strength: float,
        init_weights: bool,
        module_name: str = "",
        inference_mode: bool = False,
    ) -> list[list[int]]:
        """Create the adapter's tensors; returns the component indices per term it now holds."""
        if adapter_name in self.merged_adapters:
            raise AdapterValidationError(
                f"{module_name}: adapter {adapter_name!r} is merged; unmerge it before changing it"
            )
        if component_size <= 0 or self.in_features % component_size:
            raise AdapterValidationError(
                f"{module_name}: {self.in_features} input columns do not split into components of {component_size}"
            )
        num_components = self.in_features // component_size
        trainable_identity = components is None and init_weights
        if components is None:
            # A fresh adapter: random components (init_weights=False), or every component with lambda = 0: an
            # identity edit whose lambda, u and k training can grow, as LoRA starts from B = 0.
            components = self._random_components(num_components) if not init_weights else [list(range(num_components))]
        for term in components:
            bad = [index for index in term if not 0 <= index < num_components]
            if bad:
                raise AdapterValidationError(
                    f"{module_name}: component indices {bad[:5]} out of range [0, {num_components})"
                )
        indices = torch.tensor([index for term in components for index in term], dtype=torch.long)
        term_of = torch.tensor([t for t, term in enumerate(components) for _ in term], dtype=torch.long)
        terms, count = len(components), len(indices)
        if trainable_identity:
            u = nn.functional.normalize(torch.randn(terms, self.out_features), dim=-1)
            k = nn.functional.normalize(torch.randn(count, component_size), dim=-1)
            magnitudes = torch.zeros(count)
        elif init_weights:
            u = torch.zeros(terms, self.out_features)
            k = torch.zeros(count, component_size)
            magnitudes = torch.zeros(count)
        else:
            u = nn.functional.normalize(torch.randn(terms, self.out_features), dim=-1)
            k = nn.functional.normalize(torch.randn(count, component_size), dim=-1)
            magnitudes = torch.rand(count) + 0.5
        self.steer2edit_u[adapter_name] = nn.Parameter(u)
        self.steer2edit_k[adapter_name] = nn.Parameter(k)
        self.steer2edit_lambda[adapter_name] = nn.Parameter(magnitudes)
        self.steer2edit_indices[adapter_name] = indices
        self.steer2edit_term[adapter_name] = term_of
        self.strength[adapter_name] = float(strength)
        self.component_size[adapter_name] = component_size
        self._move_adapter_to_device_of_base_layer(adapter_name, device=offload_execution_device(self.get_base_layer()))
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)
        return components

    def components(self, adapter_name: str) -> list[list[int]]:
        """The edited component indices per term, as the config lists them."""
        terms: list[list[int]] = [[] for _ in range(self.steer2edit_u[adapter_name].shape[0])]
        for index, term in zip(
            self.steer2edit_indices[adapter_name].tolist(), self.steer2edit_term[adapter_name].tolist()
        ):
            terms[term].append(index)
        return terms

    def _random_components(self, num_components: int) -> list[list[int]]:
        chosen = torch.randperm(num_components)[: max(1, num_components // 4)]
        return [sorted(int(index) for index in chosen)]

    def largest_component_magnitude(self, adapter_name: str) -> float:
        """max_c |lambda_c| |u_term(c)| |k_c| (without strength): how far the largest component moves its weights."""
        magnitudes = self.steer2edit_lambda[adapter_name].detach().double().abs()
        if not magnitudes.numel():
            return 0.0
        u_norms = self.steer2edit_u[adapter_name].detach().double().norm(dim=1)[self.steer2edit_term[adapter_name]]
        return float((magnitudes * u_norms * self.steer2edit_k[adapter_name].detach().double().norm(dim=1)).max())

    def key_matrix(self, adapter_name: str) -> torch.Tensor:
        """K [terms, in] of one adapter (see :func:`key_matrix`), in the adapter's dtype."""
        return key_matrix(
            self.steer2edit_k[adapter_name],
            self.steer2edit_lambda[adapter_name],
            self.steer2edit_indices[adapter_name],
            self.steer2edit_term[adapter_name],
            self.steer2edit_u[adapter_name].shape[0],
            self.in_features,
        )

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Dense ``delta W`` in the base weight's layout: strength * u^T K, K zero outside edited columns."""
        u = self.steer2edit_u[adapter_name].float()
        delta = self.strength[adapter_name] * (u.T @ self.key_matrix(adapter_name).float())  # [out, in]
        return delta.T if self.fan_in_fan_out else delta

    def edit_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """The edit's contribution to the output for input x: (x @ K^T) @ (strength * u), from the dense key."""
        key = self.key_matrix(adapter_name).T.to(x.dtype)
        return (x @ key) @ (self.strength[adapter_name] * self.steer2edit_u[adapter_name]).to(x.dtype)

    def add_edit_output(
        self, result: torch.Tensor, x: torch.Tensor, adapter_name: str, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """``result + edit_output(x)`` as a new tensor (the base layer's output, which hooks may hold, is never
        written to), computed from the adapter's tensors as they are now.

        One term (every solved edit): the scores are read from the edited components' inputs alone, gathered, so no
        dense key is built per call; several terms go through the dense key. Either way one fused addmm adds them.
        """
        strength = self.strength[adapter_name]  # read once: a concurrent set_strength changes whole passes only
        u = self.steer2edit_u[adapter_name]
        rows = x.reshape(-1, x.shape[-1])
        if u.shape[0] == 1:
            weighted = self.steer2edit_lambda[adapter_name][:, None] * self.steer2edit_k[adapter_name]
            chosen = rows.view(rows.shape[0], -1, weighted.shape[1]).index_select(
                1, self.steer2edit_indices[adapter_name]
            )
            scores = torch.mv(chosen.view(rows.shape[0], -1), weighted.view(-1).to(x.dtype)).unsqueeze(1)
        else:
            scores = rows @ self.key_matrix(adapter_name).T.to(x.dtype)
        u = u.to(scores.dtype)
        if result.dtype != scores.dtype:
            return result + (strength * (scores @ u)).view(result.shape).to(result.dtype)
        return torch.addmm(result.reshape(-1, result.shape[-1]), scores, u, alpha=strength).view(result.shape)

    def set_strength(self, adapter_name: str, strength: float) -> None:
        """Set an adapter's runtime multiplier; a merged adapter is unmerged and merged again at the new strength."""
        if adapter_name not in self.strength:
            return
        merged = list(self.merged_adapters)
        if adapter_name in merged:
            self.unmerge()
        self.strength[adapter_name] = float(strength)
        if adapter_name in merged:
            self.merge(adapter_names=merged)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged; unmerge it before deleting it")
        super().delete_adapter(adapter_name)

    def delta_columns(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [P], delta [out, P] float32): the input columns the edit changes and what it adds to each, from
        its tensors alone (terms that share a column add up)."""
        size = self.component_size[adapter_name]
        columns = component_columns(self.steer2edit_indices[adapter_name], size)
        values = (self.steer2edit_lambda[adapter_name][:, None] * self.steer2edit_k[adapter_name]).reshape(-1)
        u = self.steer2edit_u[adapter_name].detach().float()[self.steer2edit_term[adapter_name].repeat_interleave(size)]
        entries = self.strength[adapter_name] * u * values.detach().float()[:, None]  # [columns, out]
        positions, inverse = torch.unique(columns, return_inverse=True)
        delta = torch.zeros(len(positions), u.shape[1], device=u.device).index_add_(0, inverse, entries)
        return positions, delta.T

    def _weight_dtype(self) -> torch.dtype:
        """The dtype the base weight is stored in (an integer one when quantized)."""
        return self.get_base_weight().dtype

    def _read_columns(self, positions: torch.Tensor) -> torch.Tensor:
        """The base weight's input columns ``positions``, [out, P], in its own dtype."""
        raise NotImplementedError

    def _write_columns(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        raise NotImplementedError

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the edit to the base weights: only the columns it changes are read and written."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for adapter_name in adapter_names:
            if adapter_name not in self.steer2edit_u:
                continue
            if not self._weight_dtype().is_floating_point:
                raise TypeError(
                    f"cannot merge into a quantized {type(self.get_base_layer()).__name__} (weight dtype "
                    f"{self._weight_dtype()}): use the edit unmerged, load the base model unquantized to merge, "
                    "or export it with to_lora"
                )
            positions, delta = self.delta_columns(adapter_name)
            before = self._read_columns(positions)
            delta = delta.to(before.device)
            merged = (before.float() + delta).to(before.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infs in the merged weights; adapter {adapter_name!r} seems broken")
            self._premerge_values[adapter_name] = (positions, before, merged, delta)
            self._write_columns(positions, merged)
            self.merged_adapters.append(adapter_name)

    def unmerge(self) -> None:
        """Take the merged adapters out again: the weights they changed get back the very values they had before
        (bit for bit), unless something changed those weights since, which then keep that change."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            adapter_name = self.merged_adapters.pop()
            saved = self._premerge_values.pop(adapter_name, None)
            if adapter_name not in self.steer2edit_u or saved is None:
                continue
            positions, before, merged, delta = saved
            current = self._read_columns(positions)
            restored = before if torch.equal(current, merged) else (current.float() - delta).to(current.dtype)
            self._write_columns(positions, restored)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return True


class Steer2EditModule(nn.Module, Steer2EditLayer):
    """A module holding Steer2Edit adapters around one base module; the layer types below say how it computes."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        component_size: int,
        components: list[list[int]] | None,
        strength: float = 1.0,
        init_weights: bool = True,
        fan_in_fan_out: bool = False,
        module_name: str = "",
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        Steer2EditLayer.__init__(self, base_layer, fan_in_fan_out=fan_in_fan_out, **kwargs)
        self._active_adapter = adapter_name
        self.recorded_components = self.update_layer(
            adapter_name,
            component_size,
            components,
            strength,
            init_weights,
            module_name=module_name,
            inference_mode=inference_mode,
        )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for adapter_name in self.active_adapters:
            if adapter_name in self.steer2edit_u and self.steer2edit_indices[adapter_name].numel():
                result = self.add_edit_output(result, x, adapter_name, *args, **kwargs)
        return result

    def __repr__(self) -> str:
        return "steer2edit." + super().__repr__()


class Linear(Steer2EditModule):
    """Steer2Edit on an ``nn.Linear`` or a transformers ``Conv1D`` (``fan_in_fan_out=True``)."""

    def _read_columns(self, positions: torch.Tensor) -> torch.Tensor:
        weight = self.get_base_weight()
        positions = positions.to(weight.device)
        return weight.index_select(0, positions).T if self.fan_in_fan_out else weight.index_select(1, positions)

    def _write_columns(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        weight = self.get_base_weight()
        positions = positions.to(weight.device)
        if self.fan_in_fan_out:
            self.set_base_weight(weight.index_copy(0, positions, values.T))
        else:
            self.set_base_weight(weight.index_copy(1, positions, values))
