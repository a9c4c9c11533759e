"""Steer2Edit on transformers' fused experts: neuron edits of one ``[experts, ...]`` down projection.

The components are the neurons of every expert, numbered ``expert * neurons_per_expert + neuron`` (core/experts.py),
so the adapter's tensors, checks, merging and exports are those of a linear layer whose input is that many columns
wide. Unmerged, an edit adds ``routing weight * strength * (x_e . lambda k) u`` per routed slot, computing only the
edited neurons' inputs of the edited experts; merged, it writes only their columns of ``down_proj``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.experts import expert_input, experts_shape
from .layer import Steer2EditModule


class Experts(Steer2EditModule):
    """Steer2Edit on a fused-experts module (its ``down_proj`` parameter); see the module docstring."""

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[torch.device, torch.dtype]:
        weight: Any = base_layer.down_proj
        return weight.device, weight.dtype

    def _weight_dtype(self) -> torch.dtype:
        weight: Any = self.get_base_layer().down_proj
        return weight.dtype

    def _expert_and_neuron(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neurons = experts_shape(self.get_base_layer())[1]
        return positions // neurons, positions % neurons

    def _read_columns(self, positions: torch.Tensor) -> torch.Tensor:
        base: Any = self.get_base_layer()
        weight = base.down_proj
        experts, neurons = self._expert_and_neuron(positions.to(weight.device))
        picked = weight[experts, neurons, :] if base.is_transposed else weight[experts, :, neurons]  # [P, hidden]
        return picked.detach().T

    def _write_columns(self, positions: torch.Tensor, values: torch.Tensor) -> None:
        base: Any = self.get_base_layer()
        weight = base.down_proj
        experts, neurons = self._expert_and_neuron(positions.to(weight.device))
        with torch.no_grad():
            if base.is_transposed:
                weight.data[experts, neurons, :] = values.T.to(weight.dtype)
            else:
                weight.data[experts, :, neurons] = values.T.to(weight.dtype)

    def routed_edit(
        self, states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, adapter_name: str
    ) -> torch.Tensor:
        """What the edit adds to the experts' output [tokens, hidden]: per routed slot, its routing weight times
        strength * sum_c lambda_c k_c x_e(c)[n(c)] u_term(c), over the components c of the slot's expert e."""
        base = self.get_base_layer()
        experts, neurons = self._expert_and_neuron(self.steer2edit_indices[adapter_name])
        weighted = (self.steer2edit_lambda[adapter_name] * self.steer2edit_k[adapter_name][:, 0]).float()
        terms = self.steer2edit_term[adapter_name]
        u = self.steer2edit_u[adapter_name].float()
        scores = torch.zeros(states.shape[0], u.shape[0], device=states.device)  # [tokens, terms]
        order = torch.argsort(experts, stable=True)  # the components expert by expert
        present, counts = torch.unique_consecutive(experts[order], return_counts=True)
        routed = torch.isin(present, top_k_index)  # only experts this call routes a token to cost anything
        starts = torch.cumsum(counts, 0) - counts
        for expert, start, count in zip(present[routed].tolist(), starts[routed].tolist(), counts[routed].tolist()):
            chosen = order[start : start + count]
            tokens, slots = torch.nonzero(top_k_index == expert, as_tuple=True)
            inputs = expert_input(base, states[tokens], expert, neurons[chosen]).float()  # [routed, chosen]
            if u.shape[0] == 1:
                firing = (inputs @ weighted[chosen])[:, None]
            else:
                per_term = torch.zeros(len(chosen), u.shape[0], device=states.device)
                per_term[torch.arange(len(chosen)), terms[chosen]] = weighted[chosen]
                firing = inputs @ per_term
            scores = scores.index_add(0, tokens, firing * top_k_weights[tokens, slots].float()[:, None])
        return self.strength[adapter_name] * (scores @ u)

    def add_edit_output(
        self, result: torch.Tensor, x: torch.Tensor, adapter_name: str, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The experts' output plus the edit's (a new tensor), for the tokens ``x`` and the routing the experts were
        called with."""
        top_k_index = args[0] if args else kwargs["top_k_index"]
        top_k_weights = args[1] if len(args) > 1 else kwargs["top_k_weights"]
        edit = self.routed_edit(x, top_k_index, top_k_weights, adapter_name)
        return result + edit.view(result.shape).to(result.dtype)
