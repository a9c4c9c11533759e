"""The `steer2edit` command: demo, probe, extract, edit, eval, sweep, inspect, push, export-lora, export-gguf, merge,
lm-eval."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .errors import Steer2EditError
from .version import __version__

EPILOG = """\
examples:
  steer2edit demo                                   # edit the embedded SmolLM2 to refuse harmful requests
  steer2edit demo --behaviour concise               # or to answer briefly
  steer2edit probe --behaviour refusal --output outputs/probe.jsonl
  steer2edit probe --system-prompt "Always answer in French." --prompts my_prompts.json --output outputs/fr.jsonl
  steer2edit extract --probe outputs/probe.jsonl --output outputs/vectors
  steer2edit edit --vectors outputs/vectors --max-kl 0.05 --output outputs/refusal-edit
  steer2edit eval --adapter outputs/refusal-edit --vectors outputs/vectors --steering-strength 0.2
  steer2edit sweep --max-kl 0.05 --trials 20 --compare-steering --output outputs/sweep
  steer2edit inspect outputs/refusal-edit --heatmap outputs/refusal-edit/heatmap.png
  steer2edit push outputs/refusal-edit your-name/smollm2-refusal-edit
  steer2edit export-lora outputs/refusal-edit --output outputs/refusal-lora --rank 8
  steer2edit export-gguf outputs/refusal-edit --output outputs/refusal-gguf --merged
  steer2edit merge outputs/refusal-edit --output outputs/refusal-merged
  steer2edit lm-eval run --model hf --model_args pretrained=MODEL,peft=outputs/refusal-edit --tasks TASKS

MODEL is the embedded SmolLM2-135M-Instruct by default, or any transformers model id, folder or .gguf file.
Folders that already hold files are never replaced unless --overwrite is given; every folder is written whole.
"""


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from error
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from error
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _steering_strength(text: str) -> float:
    from .tuner.checkpoint import MAX_STRENGTH

    value = _number(text)
    if abs(value) > MAX_STRENGTH:
        raise argparse.ArgumentTypeError(
            f"a steering strength must have magnitude at most {MAX_STRENGTH:g} (the vectors are already residual-"
            f"sized; larger values only turn the model's outputs into noise), got {text}"
        )
    return value


def _rho(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"rho must be a positive number or 'off', got {text!r}") from error
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"rho must be a positive finite number (or 'off'), got {text}")
    return value


def _alpha(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in [0, 1), got {text}")
    return value


def _share(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must lie in (0, 1] (or 'off'), got {text}")
    return value


def _add_model(parser: argparse.ArgumentParser) -> None:
    from .models import EMBEDDED_MODEL

    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model id, folder or .gguf file (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"], help="default: %(default)s"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="default: %(default)s")


def _add_output(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    parser.add_argument("--output", type=Path, required=required, help=f"folder for {what}")
    parser.add_argument("--overwrite", action="store_true", help="replace the output folder if it holds files")


def _add_solver(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoSettings

    defaults = DemoSettings()
    group = parser.add_argument_group(
        "edit (elastic net: lambda = sign(g) max(|g| - rho*alpha, 0) / (rho (1-alpha)); the threshold rho*alpha "
        "chooses the components, --max-kl calibrates the scale)"
    )
    group.add_argument(
        "--rho-attn", type=_rho, default=defaults.rho_attn, help="heads; 'off' to skip (default: %(default)s)"
    )
    group.add_argument(
        "--rho-mlp", type=_rho, default=defaults.rho_mlp, help="neurons; 'off' to skip (default: %(default)s)"
    )
    group.add_argument("--alpha", type=_alpha, default=defaults.alpha, help="L1 share in [0, 1) (default: %(default)s)")
    group.add_argument(
        "--first-layer",
        type=_non_negative_int,
        default=None,
        help="edit only this layer and the ones after it; 0 = every layer (default: the upper 60%% of the layers)",
    )
    group.add_argument(
        "--key-direction",
        choices=["weight", "contrast"],
        default=defaults.key_direction,
        help="input direction of an edited head: the paper's normalize(W^T v), or the probe-minus-reference "
        "input contrast, silent on average benign input (needs reference inputs) (default: %(default)s)",
    )
    group.add_argument(
        "--max-kl",
        type=_positive_number,
        default=defaults.max_kl,
        help="calibrate the edit to this mean per-token KL from the base model on benign prompts (default: %(default)s)",
    )
    group.add_argument("--no-calibration", action="store_true", help="use rho and alpha as given, do not calibrate")
    group.add_argument(
        "--max-head-share", type=_share, default=defaults.max_head_share, help="cap on the share of heads edited"
    )
    group.add_argument(
        "--max-neuron-share", type=_share, default=defaults.max_neuron_share, help="cap on the share of neurons"
    )


def _add_adapter_source(parser: argparse.ArgumentParser) -> None:
    """A saved adapter and the base model to load it on (see _load_with_adapter)."""
    parser.add_argument("adapter", type=Path, help="Steer2Edit adapter folder")
    parser.add_argument("--model", default=None, help="base model (default: the one recorded in the adapter)")


def _add_eval(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--num-eval", type=_positive_int, default=30, help="held-out prompts per kind (default: %(default)s)"
    )
    group.add_argument("--max-new-tokens", type=_positive_int, default=32, help="default: %(default)s")
    group.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        default="transformers",
        help="generation engine; vllm serves each edit as a LoRA (needs .venv-vllm, see docs/serving.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer2edit",
        description="Turn activation-steering vectors into sparse rank-1 weight edits, shipped as PEFT adapters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"steer2edit-peft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )

    demo = command(
        "demo",
        "edit the embedded model end to end and show what changed",
        "Probe the model with its own responses, solve the strongest edit within a KL budget, compare base vs "
        "activation steering of every layer (at the KL the edit costs) vs the edit unmerged and merged on held-out "
        "prompts, save and reload the adapter, and write a results table, an edit heatmap and a metrics chart.",
    )
    _add_model(demo)
    demo.set_defaults(batch_size=96)  # every held-out prompt of a condition in one batch (see DemoSettings)
    demo.add_argument("--behaviour", choices=["refusal", "concise"], default="refusal")
    demo.add_argument("--output", type=Path, default=Path("outputs/demo"), help="folder for adapter, plots, results")
    demo.add_argument(
        "--overwrite", action="store_true", help="replace the output folder if it holds files of anything but a demo"
    )
    demo.add_argument(
        "--probe", default=None, help="probe data instead of the model's own: a .jsonl/.json/.csv file or Hub dataset"
    )
    demo.add_argument(
        "--steering-strength", type=_steering_strength, default=None, help="fixed strength instead of matched KL"
    )
    demo.add_argument("--no-plots", action="store_true", help="skip the images")
    _add_solver(demo)
    _add_eval(demo)

    probe = command(
        "probe",
        "make probe data from the model's own sampled responses",
        "Sample the model's responses to prompts with and without a behaviour (a built-in one, or any system "
        "prompt you write), keep the ones the behaviour's judges confirm, pair them on the same prompts, and save "
        "them as JSONL with a header that records how they were made.",
    )
    _add_model(probe)
    probe.add_argument(
        "--behaviour", default="refusal", help="refusal, concise or truthful (ignored with --system-prompt)"
    )
    probe.add_argument("--prompts", default=None, help="a .json list / .jsonl of prompts, or a built-in set name")
    probe.add_argument("--system-prompt", default=None, help="a behaviour of your own: responses with it vs without")
    probe.add_argument("--negative-system-prompt", default=None, help="for the unwanted responses (default: none)")
    probe.add_argument("--num-samples", type=_positive_int, default=4, help="responses per prompt and class")
    probe.add_argument("--temperature", type=_positive_number, default=0.8)
    probe.add_argument("--top-p", type=_positive_number, default=0.95)
    probe.add_argument("--max-new-tokens", type=_positive_int, default=48)
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--no-confirm", action="store_true", help="keep every response, judged or not")
    probe.add_argument("--output", type=Path, required=True, help="the .jsonl file to write")
    probe.add_argument("--overwrite", action="store_true", help="replace an existing file")

    extract = command(
        "extract",
        "extract steering vectors from probe data",
        "Run the probe data through the model and save per-module steering vectors (safetensors + JSON), with the "
        "mean inputs on benign reference prompts (the model's own answers) for contrastive keys.",
    )
    _add_model(extract)
    extract.add_argument(
        "--probe", default="refusal", help="built-in behaviour, .jsonl/.json/.csv file, or Hub dataset"
    )
    extract.add_argument("--split", default="train", help="split of a Hub dataset")
    extract.add_argument("--system-prompt", default=None)
    extract.add_argument("--reference", default="benign", help="benign prompts: a built-in set or a .json/.jsonl file")
    extract.add_argument(
        "--positions", choices=["predicting", "response", "decision"], default="predicting", help="output window"
    )
    extract.add_argument(
        "--input-positions",
        choices=["predicting", "response", "decision"],
        default="decision",
        help="input window, for component scores and contrastive keys",
    )
    _add_output(extract, "the vectors")

    edit = command(
        "edit",
        "solve an edit from steering vectors and save it as a PEFT adapter",
        "Solve a Steer2Edit edit from saved vectors (or from probe data on the fly), calibrated to a KL budget on "
        "benign prompts, check that it is not degenerate, and save the adapter.",
    )
    _add_model(edit)
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", type=Path, help="folder written by `steer2edit extract`")
    source.add_argument("--probe", help="probe data to extract from first (as for `extract`)")
    edit.add_argument("--reference", default="benign", help="benign prompts for calibration and contrastive keys")
    edit.add_argument("--behaviour", default=None, help="name recorded in the adapter (default: the probe name)")
    edit.add_argument("--heatmap", action="store_true", help="also write edit_heatmap.png into the adapter folder")
    _add_output(edit, "the adapter")
    _add_solver(edit)

    evaluate = command(
        "eval",
        "evaluate a model, an adapter and/or activation steering on held-out prompts",
        "Evaluate the base model and, when given, a saved adapter (unmerged) and activation steering side by side.",
    )
    _add_model(evaluate)
    evaluate.add_argument("--adapter", type=Path, help="adapter folder to evaluate")
    evaluate.add_argument("--vectors", type=Path, help="steering vectors for the activation-steering baseline")
    evaluate.add_argument(
        "--steering-strength", type=_steering_strength, default=1.0, help="activation steering's multiplier"
    )
    evaluate.add_argument("--behaviour", choices=["refusal", "concise"], default="refusal", help="held-out prompt set")
    evaluate.add_argument(
        "--judge",
        choices=["project", "reference"],
        default="project",
        help="refusal matcher: the project's (a refusal phrase at the start) or the reference code's (any signal "
        "anywhere)",
    )
    _add_output(evaluate, "results.json", required=False)
    _add_eval(evaluate)

    sweep = command(
        "sweep",
        "search for the strongest edit whose KL from the base stays under a budget",
        "Search rho_attn, rho_mlp, alpha and the first edited layer with optuna (two objectives: the behaviour on "
        "held-out prompts, and the KL from the base on benign prompts), save the strongest edit within --max-kl, "
        "and draw the Pareto frontier.",
    )
    _add_model(sweep)
    sweep.add_argument("--behaviour", choices=["refusal", "concise"], default="refusal")
    sweep.add_argument("--max-kl", type=_number, default=0.05, help="KL budget in nats per token")
    sweep.add_argument("--trials", type=_positive_int, default=20, help="optuna trials per method")
    sweep.add_argument("--compare-steering", action="store_true", help="also search activation steering")
    sweep.add_argument("--seed", type=int, default=0)
    _add_output(sweep, "the adapter, trials.json, frontier.png")
    _add_eval(sweep)

    inspect = command(
        "inspect",
        "show which heads and neurons a saved adapter edits",
        "Print which heads and neurons a saved Steer2Edit adapter edits, from its files alone (no model is loaded).",
    )
    inspect.add_argument("adapter", type=Path, help="folder written by save_pretrained")
    inspect.add_argument("--top", type=_positive_int, default=5, help="components listed per module")
    inspect.add_argument("--heatmap", type=Path, help="write the edit heatmap here (.png, .svg or .pdf)")

    push = command(
        "push",
        "upload a saved adapter to the Hugging Face Hub with a model card and its heatmap",
        "Upload a saved Steer2Edit adapter, a model card (README.md) and the edit heatmap. Every push is a new "
        "commit; load an older one with PeftModel.from_pretrained(base, REPO_ID, revision=COMMIT).",
    )
    push.add_argument("adapter", type=Path, help="adapter folder")
    push.add_argument("repo_id", help="user/name on the Hub (HF_ENDPOINT chooses the server)")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--commit-message", default=None)
    push.add_argument(
        "--results", type=Path, default=None, help="results.json of `steer2edit demo`/`eval` for the card"
    )

    export = command(
        "export-lora",
        "write the edit as a standard LoRA adapter (exact)",
        "Write a PEFT LoRA adapter whose outputs equal the Steer2Edit adapter's (to float32 rounding); it loads "
        "with plain PEFT, in multi-LoRA stacks, and in LoRA servers such as vLLM.",
    )
    _add_adapter_source(export)
    export.add_argument("--rank", type=_positive_int, default=None, help="pad every module to this rank")
    export.add_argument("--vllm", action="store_true", help="pad to the smallest rank vLLM serves (1, 8, 16, ...)")
    _add_output(export, "the LoRA adapter")

    gguf = command(
        "export-gguf",
        "write the edit as a GGUF LoRA adapter for llama.cpp / Ollama, and optionally a merged GGUF model",
        "Write adapter.gguf (llama.cpp's --lora, Ollama's ADAPTER), a Modelfile, and with --merged a copy of the "
        "base GGUF with the edit in its weights (only the edited tensors are quantized again).",
    )
    _add_adapter_source(gguf)
    gguf.add_argument("--base-gguf", type=Path, default=None, help="the base model's GGUF (default: the embedded one)")
    gguf.add_argument("--merged", action="store_true", help="also write merged.gguf")
    gguf.add_argument(
        "--tensor-type", choices=["base", "f16", "q8_0", "f32"], default="base", help="type of merged.gguf's weights"
    )
    gguf.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank (default: the edit's terms)")
    _add_output(gguf, "adapter.gguf, Modelfile and merged.gguf")

    merge = command(
        "merge",
        "write a model with the edit merged into its weights",
        "Load the base model, apply the adapter, merge it and save a plain transformers model (safetensors).",
    )
    _add_adapter_source(merge)
    merge.add_argument("--dtype", default="float32", choices=["bfloat16", "float32", "float16"])
    merge.add_argument("--max-shard-size", default="5GB", help="safetensors shard size")
    _add_output(merge, "the merged model")
    commands.add_parser(  # handed to lm-eval whole (see main): its --help is lm-eval's own
        "lm-eval",
        help="lm-evaluation-harness's command line, with Steer2Edit adapters loadable as peft=ADAPTER",
        add_help=False,
    )
    return parser


def inspect_adapter(folder: Path, top: int = 5) -> str:
    """A table of what a saved adapter edits, read from its files alone."""
    from .report import EditReport, read_adapter_config

    config = read_adapter_config(folder)
    report = EditReport.from_adapter_folder(folder)
    lines = [
        f"Steer2Edit adapter at {folder}",
        f"  behaviour: {config.get('behaviour')}   base model: {config.get('base_model_name_or_path')}",
        f"  rho_attn={config.get('rho_attn')} rho_mlp={config.get('rho_mlp')} alpha={config.get('alpha')} "
        f"strength={config.get('strength')} head_dim={config.get('head_dim')} "
        f"keys={config.get('key_direction')} layers={config.get('layers_to_transform') or 'all'}",
        f"  probe data: {config.get('probe_data')}",
        "",
        report.to_table(top=top),
    ]
    return "\n".join(lines)


def _load(args: argparse.Namespace, name: str | None = None) -> tuple[Any, Any]:
    import torch

    from .models import load_model

    return load_model(name or args.model, dtype=getattr(torch, args.dtype))


def _num_layers(model: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "num_hidden_layers", None) or config.n_layer)


def _first_layer(args: argparse.Namespace, num_layers: int) -> int:
    from .solver import default_first_layer

    first = default_first_layer(num_layers) if args.first_layer is None else args.first_layer
    if first >= num_layers:
        raise Steer2EditError(f"--first-layer {first} is out of range: the model has layers 0-{num_layers - 1}")
    return first


def _solver_config(args: argparse.Namespace, num_layers: int) -> Any:
    from .sweep import edit_config_from

    params = {
        "rho_attn": args.rho_attn,
        "rho_mlp": args.rho_mlp,
        "alpha": args.alpha,
        "first_layer": _first_layer(args, num_layers),
        "key_direction": args.key_direction,
    }
    return edit_config_from(params, num_layers)


def _prompts(spec: str) -> list[str]:
    """A built-in prompt set, or a file: a .json list (or {"prompts": [...]}), or .jsonl of {"prompt": ...}."""
    from .data import DataError
    from .probes import builtin_prompts

    path = Path(spec)
    if not path.is_file():
        if path.suffix or path.parent != Path("."):
            raise DataError(f"prompt file {spec} does not exist")
        return builtin_prompts(spec)
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            prompts = [row["prompt"] if isinstance(row, dict) else row for row in rows]
        else:
            content = json.loads(path.read_text(encoding="utf-8"))
            prompts = content["prompts"] if isinstance(content, dict) else content
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: expected a JSON list of prompts or JSONL of {{'prompt': ...}} ({error})") from error
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise DataError(f"{path}: every prompt must be a string")
    return prompts


def _probe_data(spec: str, model: Any, tokenizer: Any, batch_size: int, split: str = "train") -> Any:
    """Probe data: a built-in behaviour (the model's own responses), or a file or Hub dataset."""
    from .data import load_probe
    from .probes import BEHAVIOURS
    from .probes.generate import builtin_probe_data

    if spec in BEHAVIOURS:
        return builtin_probe_data(model, tokenizer, spec, batch_size=batch_size)
    return load_probe(spec, split)


def _utility(spec: str, model: Any, tokenizer: Any, batch_size: int) -> Any:
    from .probes import generate_utility_data, shipped_file

    shipped = shipped_file(model, "utility") if spec == "benign" else None
    return generate_utility_data(
        model, tokenizer, _prompts(spec), batch_size=batch_size, reuse=[shipped] if shipped else []
    )


def run_demo_command(args: argparse.Namespace) -> None:
    from .data import load_probe
    from .demo import DemoSettings, run_demo
    from .files import check_output_folder

    check_output_folder(args.output, args.overwrite or _holds_only_a_demo_run(args.output))
    settings = DemoSettings(
        model=args.model,
        behaviour=args.behaviour,
        output=args.output,
        max_kl=args.max_kl,
        rho_attn=args.rho_attn,
        rho_mlp=args.rho_mlp,
        alpha=args.alpha,
        first_layer=args.first_layer,
        key_direction=args.key_direction,
        max_head_share=args.max_head_share,
        max_neuron_share=args.max_neuron_share,
        steering_strength=args.steering_strength,
        num_eval=args.num_eval,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        plots=not args.no_plots,
        probe=load_probe(args.probe) if args.probe else None,
    )
    if args.backend != "transformers":
        raise Steer2EditError("the demo generates with transformers; use `steer2edit eval --backend vllm` for vLLM")
    outcome = run_demo(settings)
    print("\n" + outcome.table)
    print(
        f"\n{outcome.calibration}"
        f"\nactivation steering of every layer at strength {outcome.steering_strength:.3f} (same vectors, same KL)"
        f"\nreloaded adapter: max |logit diff| {outcome.reload_max_abs_diff:.2e}, same greedy answers: "
        f"{outcome.reload_same_answers}; merged: max |logit diff| {outcome.merge_max_abs_diff:.2e}"
        f"\ntime (s): {json.dumps(outcome.seconds)}, total {sum(outcome.seconds.values()):.1f}"
    )
    for path in outcome.files:
        print(f"wrote {path}")


def _holds_only_a_demo_run(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but an earlier demo's files, which a new demo run may replace."""
    import fnmatch

    own = ("adapter", "figures", "results.json", "utility.jsonl", "probe-*.jsonl")
    if not (folder / "results.json").is_file():
        return False
    if not all(any(fnmatch.fnmatch(entry.name, pattern) for pattern in own) for entry in folder.iterdir()):
        return False
    try:
        summary = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(summary, dict) and {"settings", "calibration", "results"} <= set(summary)


def run_probe(args: argparse.Namespace) -> None:
    from .generation import Sampling
    from .probes import Behaviour, builtin_prompts, generate_probe, get_behaviour

    if args.output.exists() and not args.overwrite:
        raise Steer2EditError(f"{args.output} exists; choose a new file or pass --overwrite")
    if args.output.suffix != ".jsonl":
        raise Steer2EditError(f"{args.output}: probe data is written as .jsonl")
    if args.system_prompt is not None:
        behaviour = Behaviour.from_system_prompt(args.system_prompt, args.negative_system_prompt)
        prompts = _prompts(args.prompts) if args.prompts else builtin_prompts("benign")
    else:
        behaviour = get_behaviour(args.behaviour)
        assert behaviour.prompt_set is not None
        prompts = _prompts(args.prompts or behaviour.prompt_set)
    if not prompts:
        raise Steer2EditError(f"probe generation needs at least one prompt; {args.prompts} holds none")
    model, tokenizer = _load(args)
    probe = generate_probe(
        model,
        tokenizer,
        prompts,
        behaviour,
        num_samples=args.num_samples,
        sampling=Sampling(temperature=args.temperature, top_p=min(args.top_p, 1.0), seed=args.seed),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        confirm=not args.no_confirm,
        # Written in one step when generation ends, so an old file stays as it was until then (and is reused
        # when it records this very request: the seeded samples would be the same).
        cache=args.output,
    )
    print(f"{probe} -> {args.output}")


def run_extract(args: argparse.Namespace) -> None:
    from .extraction import extract_steering_vectors
    from .files import check_output_folder

    check_output_folder(args.output, args.overwrite)
    model, tokenizer = _load(args)
    probe = _probe_data(args.probe, model, tokenizer, args.batch_size, args.split)
    utility = _utility(args.reference, model, tokenizer, args.batch_size)
    vectors = extract_steering_vectors(
        model,
        tokenizer,
        probe,
        batch_size=args.batch_size,
        system_prompt=args.system_prompt,
        reference=(utility.prompts, utility.responses),
        positions=args.positions,
        input_positions=args.input_positions,
    )
    vectors.save(args.output)
    print(f"{len(vectors.modules)} module vectors from {probe} -> {args.output}")


def run_edit(args: argparse.Namespace) -> None:
    from .extraction import extract_steering_vectors
    from .files import atomic_folder, check_output_folder
    from .sanity import check_sanity
    from .solver import edit_model
    from .vectors import SteeringVectors

    check_output_folder(args.output, args.overwrite)
    vectors = SteeringVectors.load(args.vectors) if args.vectors else None
    model, tokenizer = _load(args)
    utility = _utility(args.reference, model, tokenizer, args.batch_size)
    if vectors is None:
        probe = _probe_data(args.probe, model, tokenizer, args.batch_size)
        vectors = extract_steering_vectors(
            model,
            tokenizer,
            probe,
            batch_size=args.batch_size,
            reference=(utility.prompts, utility.responses),
            input_positions="decision",
        )
    config = _solver_config(args, _num_layers(model))
    behaviour = args.behaviour or (args.probe if args.probe and not Path(args.probe).is_file() else None)
    peft_model = edit_model(
        model,
        vectors,
        config,
        behaviour=behaviour,
        max_kl=None if args.no_calibration else args.max_kl,
        utility=utility,
        tokenizer=tokenizer,
        max_head_share=args.max_head_share,
        max_neuron_share=args.max_neuron_share,
    )
    report = peft_model.edit_reports["default"]
    calibration = getattr(peft_model, "calibrations", {}).get("default")
    if calibration is not None:
        print(calibration.summary())
    print(report.to_table(edited_only=True))
    check_sanity(peft_model, tokenizer, utility.prompts[:8])
    with atomic_folder(args.output) as staging:
        peft_model.save_pretrained(str(staging), save_embedding_layers=False)
        if args.heatmap:
            from .plots import plot_edit_heatmap, save_figure

            save_figure(plot_edit_heatmap(report), staging / "edit_heatmap.png")
    print(f"adapter saved to {args.output}")


def run_eval(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .demo import evaluation_prompts
    from .evaluation.suite import evaluate_conditions, results_table
    from .judges import ReferenceRefusalMatcher, RefusalMatcher

    if args.output:
        from .files import check_output_folder

        check_output_folder(args.output, args.overwrite)
    judge = ReferenceRefusalMatcher() if args.judge == "reference" else RefusalMatcher()
    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    if args.backend == "vllm":
        from .vllm_generation import evaluate_with_vllm

        results = evaluate_with_vllm(args, prompts, judge)
    else:
        conditions, tokenizer = _eval_conditions(args)
        results = evaluate_conditions(
            conditions, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, judge=judge
        )
    print(results_table(results))
    if args.output:
        from .files import atomic_folder

        with atomic_folder(args.output) as staging:
            (staging / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.output / 'results.json'}")


def _eval_conditions(args: argparse.Namespace) -> tuple[list[Any], Any]:
    from peft import PeftModel

    from .evaluation.suite import Condition, combined
    from .steering import steer
    from .vectors import SteeringVectors

    model, tokenizer = _load(args)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter)
    reference = model.disable_adapter if args.adapter else None
    conditions = [Condition("base", model, reference) if reference else Condition("base", model)]
    if args.vectors:
        vectors = SteeringVectors.load(args.vectors)
        off = reference or conditions[0].context
        steering = combined(off, lambda: steer(model, vectors, args.steering_strength))
        conditions.append(Condition(f"steering x{args.steering_strength:g}", model, steering))
    if args.adapter:
        conditions.append(Condition(f"adapter {args.adapter.name}", model))
    return conditions, tokenizer


def run_sweep(args: argparse.Namespace) -> None:
    import tempfile
    from contextlib import ExitStack
    from dataclasses import asdict

    from .demo import evaluation_prompts
    from .extraction import extract_steering_vectors
    from .files import atomic_folder, check_output_folder
    from .generation import generate_responses
    from .plots import plot_frontiers, save_figure
    from .solver import edit_model
    from .sweep import best_under, edit_config_from, generation_measure, pareto_front, search

    if args.backend == "vllm" and args.compare_steering:
        raise Steer2EditError(
            "activation steering needs forward hooks, which vLLM has not: drop --compare-steering or use "
            "--backend transformers"
        )
    check_output_folder(args.output, args.overwrite)
    model, tokenizer = _load(args)
    vectors = extract_steering_vectors(
        model, tokenizer, _probe_data(args.behaviour, model, tokenizer, args.batch_size), batch_size=args.batch_size
    )
    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    prompts.borderline = []
    base_benign = generate_responses(
        model, tokenizer, prompts.benign, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    with ExitStack() as stack:
        answer = None
        if args.backend == "vllm":
            from .vllm_generation import VllmTrialAnswers

            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="steer2edit-sweep-"))
            heads = int(model.config.get_text_config().num_attention_heads)
            answer = VllmTrialAnswers(
                args.model, scratch, max_new_tokens=args.max_new_tokens, dtype=args.dtype, max_rank=heads
            )
        measure = generation_measure(
            args.behaviour,
            tokenizer,
            prompts,
            base_benign,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            answer=answer,
        )
        methods = ["Steer2Edit"] + (["steering"] if args.compare_steering else [])
        trials = {m: search(model, vectors, measure, method=m, trials=args.trials, seed=args.seed) for m in methods}
    best = best_under(trials["Steer2Edit"], args.max_kl)
    if best is None:
        lowest = min(t.kl for t in trials["Steer2Edit"])
        raise Steer2EditError(f"no edit tried stays under KL {args.max_kl}; the lowest KL reached was {lowest:.4f}")
    label = "refusal - over-refusal" if args.behaviour == "refusal" else "length reduction"
    peft_model = edit_model(model, vectors, edit_config_from(best.params, _num_layers(model)), behaviour=args.behaviour)
    with atomic_folder(args.output) as staging:
        (staging / "trials.json").write_text(
            json.dumps({m: [asdict(t) for t in ts] for m, ts in trials.items()}, indent=2) + "\n"
        )
        fronts = {m: [(t.kl, t.attribute) for t in pareto_front(ts)] for m, ts in trials.items()}
        figure = plot_frontiers(fronts, "KL from base (nats/token)", label, f"{args.behaviour}: Pareto frontier")
        save_figure(figure, staging / "frontier.png")
        peft_model.save_pretrained(str(staging / "adapter"), save_embedding_layers=False)
    print(f"wrote {args.output / 'frontier.png'}")
    print(f"Pareto front of Steer2Edit ({label} vs KL):")
    for t in pareto_front(trials["Steer2Edit"]):
        print(f"  {label} {t.attribute:+.3f}  KL {t.kl:.4f}  {t.params}")
    print(f"strongest edit under KL {args.max_kl}: {label} {best.attribute:+.3f}, KL {best.kl:.4f}, {best.params}")
    print(f"adapter saved to {args.output / 'adapter'}")


def run_inspect(args: argparse.Namespace) -> None:
    print(inspect_adapter(args.adapter, args.top))
    if args.heatmap:
        from .plots import plot_edit_heatmap, save_figure
        from .report import EditReport

        print(f"wrote {save_figure(plot_edit_heatmap(EditReport.from_adapter_folder(args.adapter)), args.heatmap)}")


def _load_with_adapter(args: argparse.Namespace, dtype: str = "float32") -> tuple[Any, Any]:
    """The base model recorded in (or given for) an adapter, with the adapter loaded on it."""
    import torch
    from peft import PeftModel

    from .models import EMBEDDED_HUB_ID, EMBEDDED_MODEL, load_model
    from .report import read_adapter_config

    config = read_adapter_config(args.adapter)
    base_name = args.model or config.get("base_model_name_or_path")
    if base_name == EMBEDDED_HUB_ID and args.model is None:
        base_name = EMBEDDED_MODEL  # recorded under its Hub id, but here the embedded copy is used
    if not base_name:
        raise Steer2EditError("the adapter records no base model: pass --model")
    model, tokenizer = load_model(base_name, dtype=getattr(torch, dtype))
    return PeftModel.from_pretrained(model, args.adapter), tokenizer


def run_push(args: argparse.Namespace) -> None:
    from .hub import push_adapter_folder, results_markdown

    results = results_markdown(args.results) if args.results else None
    commit = push_adapter_folder(
        args.adapter,
        args.repo_id,
        revision=args.revision,
        private=args.private or None,
        commit_message=args.commit_message,
        results=results,
    )
    print(f"pushed {args.adapter} to {commit.commit_url} (revision {commit.oid})")


def run_export(args: argparse.Namespace) -> None:
    from .export import edit_terms, to_lora
    from .files import check_output_folder

    check_output_folder(args.output, args.overwrite)
    model, _ = _load_with_adapter(args)
    rank = args.rank
    if args.vllm:
        from .vllm_generation import vllm_rank

        rank = vllm_rank(max(rank or 1, edit_terms(model)))
    config, _ = to_lora(model, output=args.output, rank=rank)
    print(f"LoRA adapter (r={config.r}, {len(config.target_modules or [])} modules) written to {args.output}")


def run_export_gguf(args: argparse.Namespace) -> None:
    from .export.gguf import export_gguf_lora, export_merged_gguf, ollama_modelfile
    from .files import atomic_folder, check_output_folder
    from .models import EMBEDDED_HUB_ID, embedded_gguf_file
    from .report import read_adapter_config

    check_output_folder(args.output, args.overwrite)
    base_gguf = args.base_gguf
    recorded = read_adapter_config(args.adapter).get("base_model_name_or_path")
    if base_gguf is None and (args.model or recorded) in (None, EMBEDDED_HUB_ID, "embedded:smollm2-135m-instruct"):
        base_gguf = embedded_gguf_file()
    if base_gguf is None and str(args.model or "").endswith(".gguf"):
        base_gguf = Path(args.model)
    if base_gguf is None:
        raise Steer2EditError("pass --base-gguf: the GGUF file of the adapter's base model")
    model, _ = _load_with_adapter(args)
    with atomic_folder(args.output) as staging:
        export_gguf_lora(model, staging / "adapter.gguf", rank=args.rank)
        written = ["adapter.gguf"]
        modelfile = ollama_modelfile(str(Path(base_gguf).resolve()), "./adapter.gguf")
        if args.merged:
            info = export_merged_gguf(model, base_gguf, staging / "merged.gguf", tensor_type=args.tensor_type)
            written.append("merged.gguf")
            if info["converted_to_q8_0"]:
                print(
                    f"{len(info['converted_to_q8_0'])} edited tensor(s) written as Q8_0 (no quantizer for their type)"
                )
            (staging / "Modelfile.merged").write_text(ollama_modelfile("./merged.gguf"))
            written.append("Modelfile.merged")
        (staging / "Modelfile").write_text(modelfile)
        written.append("Modelfile")
    print(f"wrote {', '.join(written)} to {args.output}")


def run_merge(args: argparse.Namespace) -> None:
    from .files import atomic_folder, check_output_folder

    check_output_folder(args.output, args.overwrite)
    model, tokenizer = _load_with_adapter(args, args.dtype)
    merged = model.merge_and_unload()
    with atomic_folder(args.output) as staging:  # a folder without its tokenizer is never left behind
        merged.save_pretrained(staging, max_shard_size=args.max_shard_size)
        tokenizer.save_pretrained(staging)
    print(f"merged model written to {args.output} (load it with AutoModelForCausalLM.from_pretrained)")


COMMANDS = {
    "demo": run_demo_command,
    "probe": run_probe,
    "extract": run_extract,
    "edit": run_edit,
    "eval": run_eval,
    "sweep": run_sweep,
    "inspect": run_inspect,
    "push": run_push,
    "export-lora": run_export,
    "export-gguf": run_export_gguf,
    "merge": run_merge,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:
        from .harness import run_harness

        try:
            return run_harness(argv[1:])
        except Steer2EditError as error:
            print(f"steer2edit: error: {error}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (Steer2EditError, ValueError, FileNotFoundError, OSError) as error:
        print(f"steer2edit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("steer2edit: interrupted; no output was written, earlier files are as they were", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
