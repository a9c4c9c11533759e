"""EditReport: what an edit changed, per layer and module, readable as a table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from .extraction import decoder_model
from .tuner import Steer2EditLayer


@dataclass
class ModuleReport:
    module: str
    layer: int | None
    kind: str  # "attention" (heads) or "mlp" (neurons)
    num_components: int
    num_edited: int
    max_magnitude: float
    top_components: list[tuple[int, float]]  # (component index, lambda), largest |lambda| first


@dataclass
class EditReport:
    adapter_name: str
    modules: list[ModuleReport] = field(default_factory=list)

    def _total(self, kind: str, count: str) -> int:
        return sum(getattr(m, count) for m in self.modules if m.kind == kind)

    @property
    def edited_heads(self) -> int:
        return self._total("attention", "num_edited")

    @property
    def edited_neurons(self) -> int:
        return self._total("mlp", "num_edited")

    @property
    def total_heads(self) -> int:
        return self._total("attention", "num_components")

    @property
    def total_neurons(self) -> int:
        return self._total("mlp", "num_components")

    def to_table(self, top: int = 3) -> str:
        header = f"{'layer':>5}  {'module':<28} {'edited':>13}  {'max |lambda|':>12}  top components (index: lambda)"
        lines = [header, "-" * len(header)]
        for m in self.modules:
            short = m.module.split(".", 3)[-1] if m.layer is not None else m.module
            tops = ", ".join(f"{i}: {value:+.3f}" for i, value in m.top_components[:top])
            edited = f"{m.num_edited}/{m.num_components}"
            lines.append(
                f"{m.layer if m.layer is not None else '-':>5}  {short:<28} {edited:>13}  {m.max_magnitude:>12.4f}  {tops}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"total: {self.edited_heads}/{self.total_heads} heads, {self.edited_neurons}/{self.total_neurons} neurons edited"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()


def _layer(module_name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", f".{module_name}.")
    return int(match.group(1)) if match else None


def edit_report(model: nn.Module, adapter_name: str = "default", top: int = 5) -> EditReport:
    """Summarise a Steer2Edit adapter already on ``model`` (solved or loaded)."""
    report = EditReport(adapter_name)
    for name, module in decoder_model(model).named_modules():
        if not isinstance(module, Steer2EditLayer) or adapter_name not in module.steer2edit_u:
            continue
        size = module.component_size[adapter_name]
        magnitudes = module.steer2edit_lambda[adapter_name].detach().float().cpu()
        indices = module.steer2edit_indices[adapter_name].cpu()
        order = magnitudes.abs().argsort(descending=True)[:top]
        report.modules.append(
            ModuleReport(
                module=name,
                layer=_layer(name),
                kind="attention" if size > 1 else "mlp",
                num_components=module.in_features // size,
                num_edited=int(indices.numel()),
                max_magnitude=float(magnitudes.abs().max()) if magnitudes.numel() else 0.0,
                top_components=[(int(indices[i]), float(magnitudes[i])) for i in order],
            )
        )
    return report
