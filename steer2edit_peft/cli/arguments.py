"""Argument groups and value checks shared by the commands, and the loaders they share."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, NoReturn

from ..core.errors import Steer2EditError
from ..core.settings import (
    DEFAULTS,
    DTYPE_NAMES,
    EVERY_PROMPT_BEHAVIOURS,
    GATES,
    KEY_DIRECTIONS,
    KL_ANSWERS,
    POSITIONS,
    EditSettings,
    defaults_for,
)


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from error
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from error
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def steering_strength(text: str) -> float:
    from ..tuner.config_rules import MAX_STRENGTH

    value = number(text)
    if abs(value) > MAX_STRENGTH:
        raise argparse.ArgumentTypeError(
            f"a steering strength must have magnitude at most {MAX_STRENGTH:g} (the vectors are already residual-"
            f"sized; larger values only turn the model's outputs into noise), got {text}"
        )
    return value


def kl_budget(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"a KL budget must be positive, got {text}; to keep the solved scale without calibrating, pass "
            "--no-calibration instead"
        )
    return value


def rho(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"rho must be a positive number or 'off', got {text!r}") from error
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"rho must be a positive finite number (or 'off'), got {text}")
    return value


def alpha(text: str) -> float:
    value = number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in [0, 1), got {text}")
    return value


def share(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    value = number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must lie in (0, 1] (or 'off'), got {text}")
    return value


def add_model(parser: argparse.ArgumentParser) -> None:
    from ..core.models import EMBEDDED_MODEL

    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model id, folder or .gguf file (default: %(default)s)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="auto: bfloat16 where the hardware computes in it natively, else float32 (default: auto)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward pass")


def add_output(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    parser.add_argument("--output", type=Path, required=required, help=f"folder for {what}")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files of the names this command writes; other files in the folder are never touched",
    )


class HelpFormatter(argparse.HelpFormatter):
    """Each option's default once: added where the help names none, and left out where it says nothing (None,
    False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse that answers a mistake in a few lines: the error, a close match where there is one, and where the
    options are listed, instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the options)\n")

    def unknown_option(self, tokens: list[str]) -> str | None:
        """The first of ``tokens`` that names no option of this parser (nor a unique prefix of one)."""
        known = [option for option in self._option_string_actions if option.startswith("--")]
        for token in tokens:
            if token == "--":
                return None
            if not token.startswith("-") or len(token) < 2 or token[1].isdigit() or token[1] == ".":
                continue
            name = token.split("=", 1)[0]
            if name in self._option_string_actions or (
                name.startswith("--") and any(o.startswith(name) for o in known)
            ):
                continue
            return name
        return None

    def refuse_unknown_option(self, tokens: list[str]) -> None:
        name = self.unknown_option(tokens)
        if name is not None:
            self.error(f"unrecognized option {name}" + did_you_mean(name, list(self._option_string_actions)))


def did_you_mean(word: str, choices: list[str]) -> str:
    """'; did you mean X?' for the closest of ``choices``, or nothing."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def add_command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=description, formatter_class=HelpFormatter)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show other libraries' messages and progress bars too"
    )
    return parser


def add_positions(parser: Any, outputs: bool = False) -> None:
    """Where extraction reads the means: the inputs (scores, keys) and, with ``outputs``, the steering vector."""
    if outputs:
        parser.add_argument("--positions", choices=POSITIONS, default=DEFAULTS.positions, help="output window")
    parser.add_argument(
        "--input-positions",
        choices=POSITIONS,
        default=DEFAULTS.input_positions,
        help="input window, for component scores and contrastive keys",
    )


def reference_sets(text: str) -> str:
    """Comma-separated prompt sets, each read (and refused, naming the file and line) before any model loads."""
    from ..probes import load_prompts

    for part in text.split(","):
        if part:
            try:
                load_prompts(part)
            except Steer2EditError as error:
                raise argparse.ArgumentTypeError(str(error)) from error
    return text


def add_reference(parser: Any) -> None:
    """The data the edit must leave alone (its mean inputs for contrastive keys, its KL for calibration)."""
    parser.add_argument(
        "--reference",
        type=reference_sets,
        default=",".join(DEFAULTS.reference),
        metavar="SETS",
        help="prompts the edit must leave alone, answered by the model itself: comma-separated built-in sets "
        "(benign, borderline, framed) or .json/.jsonl files (default: %(default)s)",
    )


def add_vectors_or_probe(parser: Any, probe_help: str, required: bool) -> None:
    """Where the steering vectors come from: a folder of `steer2edit extract`, or probe data extracted on the fly."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--vectors", type=Path, help="folder written by `steer2edit extract`")
    source.add_argument("--probe", default=None, help=probe_help)


def add_solver(parser: argparse.ArgumentParser) -> None:
    """The solver's settings; every default is EditSettings' (``steer2edit_peft.DEFAULTS``)."""
    defaults = DEFAULTS
    group = parser.add_argument_group(
        "edit (elastic net: lambda = sign(g) max(|g| - rho*alpha, 0) / (rho (1-alpha)); the threshold rho*alpha "
        "chooses the components, --max-kl calibrates the scale)"
    )
    group.add_argument(
        "--rho-attn",
        type=rho,
        default=defaults.rho_attn,
        help=f"heads; 'off' to skip (default: {defaults.rho_attn or 'off'})",
    )
    group.add_argument(
        "--rho-mlp",
        type=rho,
        default=defaults.rho_mlp,
        help=f"neurons; 'off' to skip (default: {defaults.rho_mlp or 'off'})",
    )
    group.add_argument("--alpha", type=alpha, default=defaults.alpha, help="L1 share in [0, 1) (default: %(default)s)")
    group.add_argument(
        "--first-layer",
        type=non_negative_int,
        default=DEFAULTS.first_layer,
        help="edit only this layer and the ones after it; 0 = every layer (default: the upper 60%% of the layers)",
    )
    group.add_argument(
        "--key-direction",
        choices=KEY_DIRECTIONS,
        default=None,
        help="input direction of an edited head: the paper's normalize(W^T v); the probe-minus-reference "
        "input contrast, silent on average benign input; or the selective key, which tells probe prompts from "
        "reference prompts best for its firing on the reference (contrast and selective need reference inputs) "
        f"(default: contrast for behaviours of every answer ({', '.join(EVERY_PROMPT_BEHAVIOURS)}), "
        f"{defaults.key_direction} otherwise)",
    )
    group.add_argument(
        "--max-kl",
        type=kl_budget,
        default=defaults.max_kl,
        help="calibrate the edit to this mean per-token KL from the base model on the model's own answers to the "
        f"reference prompts (every k-th of them, {KL_ANSWERS} or more where there are that many) (default: %(default)s)",
    )
    group.add_argument("--no-calibration", action="store_true", help="use rho and alpha as given, do not calibrate")
    group.add_argument(
        "--max-head-share", type=share, default=defaults.max_head_share, help="cap on the share of heads edited"
    )
    group.add_argument(
        "--max-neuron-share", type=share, default=defaults.max_neuron_share, help="cap on the share of neurons"
    )
    add_positions(group)


def add_adapter_source(parser: argparse.ArgumentParser) -> None:
    """A saved adapter and the base model to load it on (see load_with_adapter)."""
    parser.add_argument("adapter", type=Path, help="Steer2Edit adapter folder")
    parser.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter)")


def add_eval(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--num-eval", type=positive_int, default=30, help="held-out prompts per kind (default: %(default)s)"
    )
    group.add_argument("--max-new-tokens", type=positive_int, default=32, help="greedy tokens per answer")
    group.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        default="transformers",
        help="generation engine; vllm serves each edit as a LoRA (needs .venv-vllm, see docs/serving.md)",
    )


def load(args: argparse.Namespace, name: str | None = None) -> tuple[Any, Any]:
    from ..core.models import load_model

    return load_model(name or args.model, dtype=args.dtype)


def prompt_list(spec: str) -> list[str]:
    """A built-in prompt set, or a file of prompts (see probes.datasets.read_prompts)."""
    from ..probes import load_prompts

    return load_prompts(spec)


def settings_from(args: argparse.Namespace, behaviour: str | None) -> EditSettings:
    """The EditSettings the solver arguments describe (every one defaults to ``defaults_for(behaviour)``; with
    ``--gates``, the gate fields default to ``GATES``')."""
    gate_amount = getattr(args, "gates", None)  # only `edit` has the gate options
    gates = {}
    if gate_amount is not None:
        gates = {name: getattr(GATES, name) for name in GATES.__dataclass_fields__ if name.startswith("gate_")}
        gates |= {
            "gate_amount": gate_amount,
            "gate_layers": tuple(args.gate_layers),
            "gate_quantile": args.gate_quantile,
        }
    return EditSettings(
        **gates,
        rho_attn=args.rho_attn,
        rho_mlp=args.rho_mlp,
        alpha=args.alpha,
        key_direction=args.key_direction or defaults_for(behaviour).key_direction,
        first_layer=args.first_layer,
        input_positions=args.input_positions,
        max_kl=None if args.no_calibration or gate_amount is not None else args.max_kl,
        max_head_share=args.max_head_share,
        max_neuron_share=args.max_neuron_share,
    )


def behaviour_named_by(probe: str | None) -> str | None:
    """The behaviour a --probe names: a built-in behaviour or a Hub dataset's name; a file names none."""
    return probe if probe and not Path(probe).is_file() else None


def load_probe_data(spec: str, model: Any, tokenizer: Any, batch_size: int, split: str = "train") -> Any:
    """Probe data: a built-in behaviour (the model's own responses), or a file or Hub dataset."""
    from ..probes import BEHAVIOURS
    from ..probes.datasets import load_probe
    from ..probes.generate import builtin_probe_data

    if spec in BEHAVIOURS:
        return builtin_probe_data(model, tokenizer, spec, batch_size=batch_size)
    return load_probe(spec, split)


def load_utility(spec: str, model: Any, tokenizer: Any, batch_size: int) -> Any:
    """Reference data: the model's own answers to each comma-separated prompt set of ``spec``."""
    from ..probes.generate import reference_data

    return reference_data(model, tokenizer, [part for part in spec.split(",") if part], batch_size=batch_size)


def load_with_adapter(args: argparse.Namespace, dtype: str = "float32") -> tuple[Any, Any]:
    """The base model recorded in (or given for) an adapter, with the adapter loaded on it."""
    from peft import PeftModel

    from ..core.models import EMBEDDED_HUB_ID, EMBEDDED_MODEL, load_model
    from ..tuner.report import read_adapter_config

    config = read_adapter_config(args.adapter)
    base_name = args.model or config.get("base_model_name_or_path")
    if base_name == EMBEDDED_HUB_ID and args.model is None:
        base_name = EMBEDDED_MODEL  # recorded under its Hub id, but here the embedded copy is used
    if not base_name:
        raise Steer2EditError("the adapter records no base model: pass --model")
    model, tokenizer = load_model(base_name, dtype=dtype)
    return PeftModel.from_pretrained(model, args.adapter), tokenizer


def extracted_vectors(spec: str, model: Any, tokenizer: Any, utility: Any, batch_size: int, settings: Any) -> Any:
    """Steering vectors of the probe data ``spec``, with the utility data's mean inputs as the reference."""
    from ..extraction import extract_steering_vectors

    return extract_steering_vectors(
        model,
        tokenizer,
        load_probe_data(spec, model, tokenizer, batch_size),
        batch_size=batch_size,
        reference=(utility.prompts, utility.responses),
        positions=settings.positions,
        input_positions=settings.input_positions,
    )
