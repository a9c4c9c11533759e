"""The `steer2edit` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import Steer2EditError
from .version import __version__


def inspect_adapter(folder: Path) -> str:
    """A table of what a saved adapter edits, read from its files alone (no model is loaded)."""
    from safetensors import safe_open

    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file():
        raise Steer2EditError(f"{folder} holds no adapter_config.json; is it a saved adapter folder?")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "STEER2EDIT":
        raise Steer2EditError(f"{folder} is a {config.get('peft_type')} adapter, not a Steer2Edit one")
    magnitudes: dict[str, float] = {}
    if weights_path.is_file():
        with safe_open(str(weights_path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open has no __iter__)
                if key.endswith(".steer2edit_lambda"):
                    values = handle.get_tensor(key)
                    module = key.removeprefix("base_model.model.").removesuffix(".steer2edit_lambda")
                    magnitudes[module] = float(values.abs().max()) if values.numel() else 0.0
    lines = [
        f"Steer2Edit adapter at {folder}",
        f"  behaviour: {config.get('behaviour')}   base model: {config.get('base_model_name_or_path')}",
        f"  rho_attn={config.get('rho_attn')} rho_mlp={config.get('rho_mlp')} alpha={config.get('alpha')} "
        f"strength={config.get('strength')} head_dim={config.get('head_dim')}",
        f"  probe data: {config.get('probe_data')}",
        "",
        f"  {'module':<40} {'edited':>7} {'max |lambda|':>13}  components",
    ]
    for module, terms in config.get("edited_components", {}).items():
        components = sorted({index for term in terms for index in term})
        shown = ", ".join(map(str, components[:12])) + (" ..." if len(components) > 12 else "")
        lines.append(f"  {module:<40} {len(components):>7} {magnitudes.get(module, float('nan')):>13.4f}  {shown}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer2edit",
        description="Turn activation-steering vectors into sparse rank-1 weight edits, shipped as PEFT adapters.",
    )
    parser.add_argument("--version", action="version", version=f"steer2edit-peft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect",
        help="show which heads and neurons a saved adapter edits",
        description="Print which heads and neurons a saved Steer2Edit adapter edits, from its files alone.",
    )
    inspect.add_argument("adapter", type=Path, help="folder written by save_pretrained")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "inspect":
            print(inspect_adapter(args.adapter))
    except Steer2EditError as error:
        print(f"steer2edit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
