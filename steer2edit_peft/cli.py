"""The `steer2edit` command: demo, extract, edit, eval, inspect, merge."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import Steer2EditError
from .version import __version__

EPILOG = """\
examples:
  steer2edit demo                                   # edit the embedded SmolLM2 to refuse harmful requests
  steer2edit demo --behaviour concise               # or to answer briefly
  steer2edit extract --probe refusal --output outputs/vectors
  steer2edit edit --vectors outputs/vectors --rho-attn 0.1 --rho-mlp off --first-layer 14 --output outputs/refusal-edit
  steer2edit eval --adapter outputs/refusal-edit --vectors outputs/vectors --steering-strength 2
  steer2edit sweep --max-kl 0.05 --trials 20 --compare-steering --output outputs/sweep
  steer2edit inspect outputs/refusal-edit --heatmap outputs/refusal-edit/heatmap.png
  steer2edit push outputs/refusal-edit your-name/smollm2-refusal-edit
  steer2edit export-lora outputs/refusal-edit --output outputs/refusal-lora --rank 8
  steer2edit merge outputs/refusal-edit --output outputs/refusal-merged

MODEL is the embedded SmolLM2-135M-Instruct by default, or any transformers model id, folder or .gguf file.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _rho(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"rho must be positive (or 'off'), got {text}")
    return value


def _alpha(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in [0, 1), got {text}")
    return value


def _add_model(parser: argparse.ArgumentParser) -> None:
    from .models import EMBEDDED_MODEL

    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model id, folder or .gguf file (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"], help="default: %(default)s"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="default: %(default)s")


def _add_solver(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoSettings

    defaults = DemoSettings()

    group = parser.add_argument_group("edit (elastic net: lambda = sign(g) max(|g| - rho*alpha, 0) / (rho (1-alpha)))")
    group.add_argument(
        "--rho-attn", type=_rho, default=defaults.rho_attn, help="heads; 'off' to skip (default: %(default)s)"
    )
    group.add_argument(
        "--rho-mlp", type=_rho, default=defaults.rho_mlp, help="neurons; 'off' to skip (default: %(default)s)"
    )
    group.add_argument("--alpha", type=_alpha, default=defaults.alpha, help="L1 share in [0, 1) (default: %(default)s)")
    group.add_argument(
        "--first-layer",
        type=int,
        default=defaults.first_layer,
        help="edit only this layer and the ones after it; 0 = every layer (default: %(default)s)",
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
    group.add_argument("--max-new-tokens", type=_positive_int, default=48, help="default: %(default)s")


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
        "Extract steering vectors, solve an edit, compare base vs activation steering (at the KL the edit costs) vs "
        "the edit unmerged and merged on held-out prompts, save and reload the adapter, and write a results table, "
        "an edit heatmap and a metrics chart.",
    )
    _add_model(demo)
    demo.add_argument("--behaviour", choices=["refusal", "concise"], default="refusal")
    demo.add_argument("--output", type=Path, default=Path("outputs/demo"), help="folder for adapter, plots, results")
    demo.add_argument(
        "--probe", default=None, help="probe data instead of the built-in set: a .jsonl/.json/.csv file or Hub dataset"
    )
    demo.add_argument("--steering-strength", type=float, default=None, help="fixed strength instead of matched KL")
    demo.add_argument("--no-plots", action="store_true", help="skip the images")
    _add_solver(demo)
    _add_eval(demo)

    extract = command(
        "extract",
        "extract steering vectors from probe data",
        "Run the probe data through the model and save per-module steering vectors (safetensors + JSON).",
    )
    _add_model(extract)
    extract.add_argument(
        "--probe", default="refusal", help="built-in probe set, .jsonl/.json/.csv file, or Hub dataset"
    )
    extract.add_argument("--split", default="train", help="split of a Hub dataset")
    extract.add_argument("--system-prompt", default=None)
    extract.add_argument("--output", type=Path, required=True, help="folder for the vectors")

    edit = command(
        "edit",
        "solve an edit from steering vectors and save it as a PEFT adapter",
        "Solve a Steer2Edit edit from saved vectors (or from probe data on the fly) and save the adapter.",
    )
    _add_model(edit)
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", type=Path, help="folder written by `steer2edit extract`")
    source.add_argument("--probe", help="probe data to extract from first (as for `extract`)")
    edit.add_argument("--behaviour", default=None, help="name recorded in the adapter (default: the probe name)")
    edit.add_argument("--output", type=Path, required=True, help="adapter folder")
    edit.add_argument("--heatmap", action="store_true", help="also write edit_heatmap.png into the adapter folder")
    _add_solver(edit)

    evaluate = command(
        "eval",
        "evaluate a model, an adapter and/or activation steering on held-out prompts",
        "Evaluate the base model and, when given, a saved adapter (unmerged) and activation steering side by side.",
    )
    _add_model(evaluate)
    evaluate.add_argument("--adapter", type=Path, help="adapter folder to evaluate")
    evaluate.add_argument("--vectors", type=Path, help="steering vectors for the activation-steering baseline")
    evaluate.add_argument("--steering-strength", type=float, default=1.0)
    evaluate.add_argument("--behaviour", choices=["refusal", "concise"], default="refusal", help="held-out prompt set")
    evaluate.add_argument("--output", type=Path, help="write results.json here")
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
    sweep.add_argument("--max-kl", type=float, default=0.05, help="KL budget in nats per token")
    sweep.add_argument("--trials", type=_positive_int, default=20, help="optuna trials per method")
    sweep.add_argument("--compare-steering", action="store_true", help="also search activation steering")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--output", type=Path, required=True, help="folder for the adapter, trials.json, frontier.png")
    _add_eval(sweep)

    inspect = command(
        "inspect",
        "show which heads and neurons a saved adapter edits",
        "Print which heads and neurons a saved Steer2Edit adapter edits, from its files alone (no model is loaded).",
    )
    inspect.add_argument("adapter", type=Path, help="folder written by save_pretrained")
    inspect.add_argument("--top", type=_positive_int, default=5, help="components listed per module")
    inspect.add_argument("--heatmap", type=Path, help="write the edit heatmap (PNG) here")

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
    export.add_argument("--output", type=Path, required=True, help="folder for the LoRA adapter")
    export.add_argument("--rank", type=_positive_int, default=None, help="pad every module to this rank")

    merge = command(
        "merge",
        "write a model with the edit merged into its weights",
        "Load the base model, apply the adapter, merge it and save a plain transformers model (safetensors).",
    )
    _add_adapter_source(merge)
    merge.add_argument("--dtype", default="float32", choices=["bfloat16", "float32", "float16"])
    merge.add_argument("--output", type=Path, required=True, help="folder for the merged model")
    merge.add_argument("--max-shard-size", default="5GB", help="safetensors shard size")
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
        f"strength={config.get('strength')} head_dim={config.get('head_dim')} layers={config.get('layers_to_transform') or 'all'}",
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


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from .demo import DemoSettings

    return DemoSettings(
        model=args.model,
        rho_attn=args.rho_attn,
        rho_mlp=args.rho_mlp,
        alpha=args.alpha,
        first_layer=args.first_layer,
        batch_size=args.batch_size,
        dtype=args.dtype,
        **extra,
    )


def run_demo_command(args: argparse.Namespace) -> None:
    from .data import load_probe
    from .demo import run_demo

    settings = _settings(
        args,
        behaviour=args.behaviour,
        output=args.output,
        steering_strength=args.steering_strength,
        num_eval=args.num_eval,
        max_new_tokens=args.max_new_tokens,
        plots=not args.no_plots,
        probe=load_probe(args.probe) if args.probe else None,
    )
    outcome = run_demo(settings)
    print("\n" + outcome.table)
    print(
        f"\nactivation steering strength {outcome.steering_strength:.3f} (same modules, same vectors)"
        f"\nreloaded adapter: max |logit diff| {outcome.reload_max_abs_diff:.2e}, same greedy answers: "
        f"{outcome.reload_same_answers}; merged: max |logit diff| {outcome.merge_max_abs_diff:.2e}"
        f"\ntime (s): {json.dumps(outcome.seconds)}, total {sum(outcome.seconds.values()):.1f}"
    )
    for path in outcome.files:
        print(f"wrote {path}")


def run_extract(args: argparse.Namespace) -> None:
    from .data import load_probe
    from .extraction import extract_steering_vectors

    probe = load_probe(args.probe, args.split)
    model, tokenizer = _load(args)
    vectors = extract_steering_vectors(
        model, tokenizer, probe, batch_size=args.batch_size, system_prompt=args.system_prompt
    )
    vectors.save(args.output)
    print(f"{len(vectors.modules)} module vectors from {probe} -> {args.output}")


def run_edit(args: argparse.Namespace) -> None:
    from .data import load_probe
    from .demo import edit_config
    from .extraction import extract_steering_vectors
    from .solver import edit_model
    from .vectors import SteeringVectors

    vectors = SteeringVectors.load(args.vectors) if args.vectors else None
    probe = None if vectors else load_probe(args.probe)
    model, tokenizer = _load(args)
    if vectors is None:
        assert probe is not None
        vectors = extract_steering_vectors(model, tokenizer, probe, batch_size=args.batch_size)
    config = edit_config(_settings(args), _num_layers(model))
    behaviour = args.behaviour or (args.probe if args.probe and not Path(args.probe).is_file() else None)
    peft_model = edit_model(model, vectors, config, behaviour=behaviour)
    report = peft_model.edit_reports["default"]
    print(report.to_table(edited_only=True))
    peft_model.save_pretrained(args.output, save_embedding_layers=False)
    print(f"adapter saved to {args.output}")
    if args.heatmap:
        from .plots import plot_edit_heatmap, save_figure

        print(f"wrote {save_figure(plot_edit_heatmap(report), args.output / 'edit_heatmap.png')}")


def run_eval(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from peft import PeftModel

    from .demo import evaluation_prompts
    from .evaluation.suite import Condition, combined, evaluate_conditions, results_table
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
    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    results = evaluate_conditions(
        conditions, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    print(results_table(results))
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
        print(f"wrote {args.output / 'results.json'}")


def run_sweep(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .data import builtin_probe
    from .demo import evaluation_prompts
    from .evaluation.generation import generate_responses
    from .extraction import extract_steering_vectors
    from .plots import plot_frontiers, save_figure
    from .solver import edit_model
    from .sweep import best_under, edit_config_from, generation_measure, pareto_front, search

    model, tokenizer = _load(args)
    vectors = extract_steering_vectors(model, tokenizer, builtin_probe(args.behaviour), batch_size=args.batch_size)
    prompts = evaluation_prompts(args.behaviour, args.num_eval)
    prompts.texts = []
    base_benign = generate_responses(
        model, tokenizer, prompts.benign, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    measure = generation_measure(
        args.behaviour, tokenizer, prompts, base_benign, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    methods = ["Steer2Edit"] + (["steering"] if args.compare_steering else [])
    trials = {m: search(model, vectors, measure, method=m, trials=args.trials, seed=args.seed) for m in methods}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "trials.json").write_text(
        json.dumps({m: [asdict(t) for t in ts] for m, ts in trials.items()}, indent=2)
    )
    fronts = {m: [(t.kl, t.attribute) for t in pareto_front(ts)] for m, ts in trials.items()}
    label = "refusal - over-refusal" if args.behaviour == "refusal" else "length reduction"
    figure = plot_frontiers(fronts, "KL from base (nats/token)", label, f"{args.behaviour}: Pareto frontier")
    print(f"wrote {save_figure(figure, args.output / 'frontier.png')}")
    print(f"Pareto front of Steer2Edit ({label} vs KL):")
    for t in pareto_front(trials["Steer2Edit"]):
        print(f"  {label} {t.attribute:+.3f}  KL {t.kl:.4f}  {t.params}")
    best = best_under(trials["Steer2Edit"], args.max_kl)
    if best is None:
        lowest = min(t.kl for t in trials["Steer2Edit"])
        raise Steer2EditError(f"no edit tried stays under KL {args.max_kl}; the lowest KL reached was {lowest:.4f}")
    num_layers = _num_layers(model)
    peft_model = edit_model(model, vectors, edit_config_from(best.params, num_layers), behaviour=args.behaviour)
    peft_model.save_pretrained(str(args.output / "adapter"), save_embedding_layers=False)
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


def _check_empty(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise Steer2EditError(f"{folder} exists and is not empty; choose a new folder")


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
    from .export import to_lora

    _check_empty(args.output)
    model, _ = _load_with_adapter(args)
    config, _ = to_lora(model, output=args.output, rank=args.rank)
    print(f"LoRA adapter (r={config.r}, {len(config.target_modules or [])} modules) written to {args.output}")


def run_merge(args: argparse.Namespace) -> None:
    _check_empty(args.output)
    model, tokenizer = _load_with_adapter(args, args.dtype)
    merged = model.merge_and_unload()
    merged.save_pretrained(args.output, max_shard_size=args.max_shard_size)
    tokenizer.save_pretrained(args.output)
    print(f"merged model written to {args.output} (load it with AutoModelForCausalLM.from_pretrained)")


COMMANDS = {
    "demo": run_demo_command,
    "extract": run_extract,
    "edit": run_edit,
    "eval": run_eval,
    "sweep": run_sweep,
    "inspect": run_inspect,
    "push": run_push,
    "export-lora": run_export,
    "merge": run_merge,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (Steer2EditError, ValueError, FileNotFoundError, OSError) as error:
        print(f"steer2edit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
