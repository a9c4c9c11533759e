"""Activation steering, the baseline: add ``strength * v`` to chosen module outputs while a context is open."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..core.architectures import decoder_model
from ..core.errors import Steer2EditError
from .vectors import SteeringVectors


def steered_modules(vectors: SteeringVectors, modules: str | Sequence[str] | None = None) -> list[str]:
    """The names of the modules ``steer`` adds to, for its ``modules`` argument."""
    if modules is None or modules == "all":
        return vectors.modules
    if isinstance(modules, str):
        chosen = [
            name
            for name in vectors.modules
            if name == modules or name.endswith("." + modules) or modules in name.split(".")
        ]
    else:
        chosen = list(modules)
    unknown = [name for name in chosen if name not in vectors.post_pos]
    if unknown or not chosen:
        raise Steer2EditError(
            f"no steering vector for module(s) {unknown or modules!r}; known: {vectors.modules[:4]}..."
        )
    return chosen


@contextmanager
def steer(
    model: nn.Module,
    vectors: SteeringVectors,
    strength: float,
    modules: str | Sequence[str] | None = None,
) -> Iterator[list[str]]:
    """Within the block, each chosen module's output gets ``strength * v`` added (v = post_pos - post_neg).

    ``modules``: None/"all" for every module the vectors cover, a suffix such as "mlp" or "o_proj", or a
    list of full module names. The hooks are removed on exit, also after an exception.
    """
    names = steered_modules(vectors, modules)
    base = decoder_model(model)
    handles = []

    def make_hook(shift: torch.Tensor):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + shift.to(output[0]),) + output[1:]
            return output + shift.to(output)

        return hook

    try:
        for name in names:
            module = base.get_submodule(name)
            handles.append(module.register_forward_hook(make_hook(strength * vectors.direction(name))))
        yield names
    finally:
        for handle in handles:
            handle.remove()
