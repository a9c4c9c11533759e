"""`steer2edit export-gguf`: the edit as a GGUF LoRA for llama.cpp and Ollama, or merged."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import Steer2EditError
from .arguments import add_adapter_source, add_command, add_output, load_with_adapter, positive_int


def register(commands: Any) -> None:
    parser = add_command(
        commands,
        "export-gguf",
        "write the edit as a GGUF LoRA adapter for llama.cpp / Ollama, and optionally a merged GGUF model",
        "Write adapter.gguf (llama.cpp's --lora, Ollama's ADAPTER), a Modelfile, and with --merged a copy of the "
        "base GGUF with the edit in its weights (only the edited tensors are quantized again).",
    )
    add_adapter_source(parser)
    parser.add_argument(
        "--base-gguf", type=Path, default=None, help="the base model's GGUF (default: the embedded one)"
    )
    parser.add_argument("--merged", action="store_true", help="also write merged.gguf")
    parser.add_argument(
        "--tensor-type", choices=["base", "f16", "q8_0", "f32"], default="base", help="type of merged.gguf's weights"
    )
    parser.add_argument("--rank", type=positive_int, default=None, help="LoRA rank (default: the edit's terms)")
    add_output(parser, "adapter.gguf, Modelfile and merged.gguf")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from ..core.files import check_output_folder, staged
    from ..core.models import EMBEDDED_HUB_ID, embedded_gguf_file
    from ..export.gguf import export_gguf_lora, export_merged_gguf, ollama_modelfile
    from ..tuner.report import read_adapter_config

    check_output_folder(args.output, args.overwrite, ("adapter.gguf", "Modelfile", "merged.gguf", "Modelfile.merged"))
    if args.tensor_type != "base" and not args.merged:
        raise Steer2EditError("--tensor-type sets the type of merged.gguf's weights: pass --merged too")
    base_gguf = args.base_gguf
    recorded = read_adapter_config(args.adapter).get("base_model_name_or_path")
    if base_gguf is None and (args.model or recorded) in (None, EMBEDDED_HUB_ID, "embedded:smollm2-135m-instruct"):
        base_gguf = embedded_gguf_file()
    if base_gguf is None and str(args.model or "").endswith(".gguf"):
        base_gguf = Path(args.model)
    if base_gguf is None:
        raise Steer2EditError("pass --base-gguf: the GGUF file of the adapter's base model")
    if not Path(base_gguf).is_file():
        raise Steer2EditError(f"--base-gguf {base_gguf} is not a file: pass the GGUF file of the adapter's base model")
    model, _ = load_with_adapter(args)
    with staged(args.output, args.overwrite) as staging:
        export_gguf_lora(model, staging / "adapter.gguf", rank=args.rank)
        written = ["adapter.gguf"]
        # Ollama reads the base GGUF where it is: an absolute path, valid while that file stays there.
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
