"""EditReport: what an edit changed, per layer and module, readable as a table, from a model or from saved files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..core.architectures import decoder_model
from ..core.errors import Steer2EditError
from . import Steer2EditLayer
from .checkpoint import PEFT_PREFIX

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class ModuleReport:
    module: str
    layer: int | None
    kind: str  # "attention" (heads) or "mlp" (neurons)
    num_components: int
    components: list[tuple[int, float]]  # (component index, lambda) of every edited component, largest |lambda| first
    neurons_per_expert: int | None = None  # fused experts: component c is neuron c % n of expert c // n

    def label(self, index: int) -> str:
        """A component as the table shows it: its index, or expert:neuron for fused experts."""
        n = self.neurons_per_expert
        return f"e{index // n}:{index % n}" if n else str(index)

    @property
    def num_edited(self) -> int:
        return len(self.components)

    @property
    def max_magnitude(self) -> float:
        return abs(self.components[0][1]) if self.components else 0.0


def _module_report(
    module: str,
    kind: str,
    num_components: int,
    indices: list[int],
    magnitudes: list[float],
    neurons_per_expert: int | None = None,
):
    components = sorted(zip(indices, magnitudes), key=lambda item: -abs(item[1]))
    return ModuleReport(module, layer_index(module), kind, num_components, components, neurons_per_expert)


@dataclass
class EditReport:
    adapter_name: str
    modules: list[ModuleReport] = field(default_factory=list)
    num_layers: int | None = None
    # Components per family over the whole model, when not every module is listed (reports read from files).
    component_totals: dict[str, int] = field(default_factory=dict)
    # Per MLP output projection holding a gate: the config's record of it (Steer2EditConfig.gates); the modules a
    # gate rewrites are not listed among the modules above.
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _total(self, kind: str, count: str) -> int:
        if count == "num_components" and kind in self.component_totals:
            return self.component_totals[kind]
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

    def to_table(self, top: int = 3, edited_only: bool = False) -> str:
        if self.gates and not self.modules:
            return self.gate_table()
        header = f"{'layer':>5}  {'module':<28} {'edited':>13}  {'max |lambda|':>12}  top components (index: lambda)"
        lines = [header, "-" * len(header)]
        for m in self.modules:
            if edited_only and not m.num_edited:
                continue
            short = m.module.split(".", 3)[-1] if m.layer is not None else m.module
            tops = ", ".join(f"{m.label(i)}: {value:+.3f}" for i, value in m.components[:top])
            edited = f"{m.num_edited}/{m.num_components}"
            lines.append(
                f"{m.layer if m.layer is not None else '-':>5}  {short:<28} {edited:>13}  {m.max_magnitude:>12.4f}  {tops}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"total: {self.edited_heads}/{self.total_heads} heads, {self.edited_neurons}/{self.total_neurons} neurons edited"
        )
        if self.gates:
            lines += ["", self.gate_table()]
        return "\n".join(lines)

    def gate_table(self) -> str:
        """Per gate: its neuron, amount, and the share of the probe's decision tokens and of the reference's tokens
        its detector reads above the threshold (where the neuron starts to write), on the data it was fitted on."""
        header = f"{'layer':>5}  {'neuron':>6}  {'amount':>6}  {'probe above threshold':>21}  reference above threshold"
        lines = [header, "-" * len(header)]
        for record in sorted(self.gates.values(), key=lambda r: r["layer"]):
            lines.append(
                f"{record['layer']:>5}  {record['neuron']:>6}  {record['amount']:>6g}  {record['probe_share']:>21.1%}  "
                f"{record['reference_share']:.2%}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"{len(self.gates)} gates: one MLP neuron per layer, its gate and up rows and its output column rewritten; "
            "below its threshold a gate adds almost nothing"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()

    @classmethod
    def from_adapter_folder(cls, folder: str | Path) -> EditReport:
        """The report of a saved adapter, read from its JSON and safetensors files alone (no model)."""
        from safetensors import safe_open

        folder = Path(folder)
        config = read_adapter_config(folder)
        weights = folder / ADAPTER_WEIGHTS
        signature = config.get("base_model_signature") or {}
        attention_suffixes = config.get("attention_modules") or []
        lambdas: dict[str, list[float]] = {}
        if weights.is_file():
            try:
                with safe_open(str(weights), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                        if key.endswith(".steer2edit_lambda"):
                            module = key.removeprefix(PEFT_PREFIX).removesuffix(".steer2edit_lambda")
                            lambdas[module] = handle.get_tensor(key).float().tolist()
            except Exception as error:  # safetensors raises its own error types for damaged files
                raise Steer2EditError(f"{weights} cannot be read as safetensors: {error}") from error
        layers = signature.get("num_hidden_layers")
        report = cls(config.get("behaviour") or folder.name, num_layers=layers)
        report.component_totals = component_totals(
            signature,
            config.get("layers_to_transform"),
            bool(attention_suffixes) and (config.get("rho_attn") or 0) > 0,
            bool(config.get("mlp_modules")) and (config.get("rho_mlp") or 0) > 0,
        )
        experts = config.get("fused_experts") or {}
        if experts:  # the signature's sizes describe the dense layers only
            report.component_totals = {}
        report.gates = config.get("gates") or {}
        gated = gate_modules(report.gates)
        for module, terms in config.get("edited_components", {}).items():
            if module in gated:
                continue
            indices = [index for term in terms for index in term]
            is_attention = any(module == s or module.endswith("." + s) for s in attention_suffixes)
            if is_attention:
                size = signature.get("num_attention_heads") or max(indices, default=-1) + 1
            elif module in experts:
                size = experts[module][0] * experts[module][1]
            else:
                size = signature.get("intermediate_size") or max(indices, default=-1) + 1
            magnitudes = lambdas.get(module, [float("nan")] * len(indices))
            if len(magnitudes) != len(indices):
                raise Steer2EditError(
                    f"{folder}: {module} lists {len(indices)} edited components but stores {len(magnitudes)} lambdas"
                )
            per_expert = experts[module][1] if module in experts else None
            kind = "attention" if is_attention else "mlp"
            report.modules.append(_module_report(module, kind, size, indices, magnitudes, per_expert))
        report.modules.sort(key=lambda m: (m.layer if m.layer is not None else -1, m.kind))
        return report


def gate_modules(gates: dict[str, dict[str, Any]]) -> set[str]:
    """Every module a gate rewrites: its output projection, gate and up projections."""
    return {name for down, record in gates.items() for name in (down, record["gate_module"], record["up_module"])}


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The JSON config of a saved Steer2Edit adapter, checked as strictly as loading checks it."""
    from dataclasses import fields

    from . import Steer2EditConfig
    from .config_rules import check_saved_config, read_config_file

    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise Steer2EditError(f"{folder} holds no {ADAPTER_CONFIG}; is it a saved adapter folder?")
    config = read_config_file(path)
    if config.get("peft_type") != "STEER2EDIT":
        raise Steer2EditError(f"{folder} is a {config.get('peft_type')} adapter, not a Steer2Edit one")
    check_saved_config(config, {f.name for f in fields(Steer2EditConfig)}, str(path))
    return config


def layer_index(module_name: str) -> int | None:
    """The decoder layer a module belongs to: the first number in its dotted name."""
    match = re.search(r"\.(\d+)\.", f".{module_name}.")
    return int(match.group(1)) if match else None


def component_totals(signature: dict[str, Any], layers_to_transform: Any, attention: bool, mlp: bool) -> dict[str, int]:
    """Heads and neurons in the layers an adapter may edit (all layers unless it names some): the whole that the
    share of edited components is counted against."""
    layers = signature.get("num_hidden_layers")
    if not (layers and signature.get("num_attention_heads") and signature.get("intermediate_size")):
        return {}
    named = [layers_to_transform] if isinstance(layers_to_transform, int) else layers_to_transform
    count = len(named or range(layers))
    return {
        "attention": count * signature["num_attention_heads"] if attention else 0,
        "mlp": count * signature["intermediate_size"] if mlp else 0,
    }


def edit_report(model: nn.Module, adapter_name: str = "default") -> EditReport:
    """Summarise a Steer2Edit adapter already on ``model`` (solved or loaded)."""
    from ..core.architectures import model_text_config

    base = decoder_model(model)
    config = getattr(base, "config", None)
    report = EditReport(adapter_name, num_layers=getattr(model_text_config(base), "num_hidden_layers", None))
    adapter_config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is not None and adapter_config is not None:
        report.component_totals = model_component_totals(base, adapter_config)
    report.gates = dict(getattr(adapter_config, "gates", {}))
    gated = gate_modules(report.gates)
    for name, module in base.named_modules():
        if not isinstance(module, Steer2EditLayer) or adapter_name not in module.steer2edit_u:
            continue
        if name in gated:
            continue
        size = module.component_size[adapter_name]
        experts = getattr(adapter_config, "fused_experts", {}).get(name)
        report.modules.append(
            _module_report(
                name,
                "attention" if size > 1 else "mlp",
                module.in_features // size,
                module.steer2edit_indices[adapter_name].tolist(),
                module.steer2edit_lambda[adapter_name].detach().float().cpu().tolist(),
                experts[1] if experts else None,
            )
        )
    return report


def model_component_totals(base: nn.Module, config: Any) -> dict[str, int]:
    """Heads and neurons of the modules an adapter's families cover in the layers it may edit, counted on the
    model (hybrid layers, per-layer head sizes and fused experts included)."""
    from .targets import base_layer_of, editable, in_out_features

    layers = config.layers_to_transform
    layers = [layers] if isinstance(layers, int) else layers
    totals = {"attention": 0, "mlp": 0}
    families = {"attention": config.attention_modules or [], "mlp": config.mlp_modules or []}
    on = {"attention": (config.rho_attn or 0) > 0, "mlp": (config.rho_mlp or 0) > 0}
    for name, module in base.named_modules():
        if ".base_layer" in f".{name}" or not editable(base_layer_of(module)):
            continue
        if layers and layer_index(name) not in layers:
            continue
        for kind, suffixes in families.items():
            if on[kind] and any(name == s or name.endswith("." + s) for s in suffixes):
                totals[kind] += in_out_features(module)[0] // config.component_size(name)
    return totals
