"""lm-evaluation-harness with Steer2Edit adapters.

lm-eval's ``hf`` model loads ``peft=ADAPTER`` with ``PeftModel.from_pretrained``, which knows STEER2EDIT only once
this package is imported. ``steer2edit lm-eval ARGS`` is lm-eval's own command line with that done first, so every
lm-eval argument, task and output works unchanged; ``pretrained=`` also takes what every steer2edit command takes (the
embedded model's name, a .gguf file), handed to lm-eval as the dense transformers folder of that model.
"""

from __future__ import annotations

import sys

from ..core.errors import Steer2EditError

INSTALL_HINT = "lm-evaluation-harness is not installed: pip install 'steer2edit-peft[lm-eval]'"


def with_loadable_models(arguments: list[str]) -> list[str]:
    """``arguments`` with ``pretrained=`` in ``--model_args`` made a folder lm-eval loads (see base_model_folder)."""
    from ..core.models import base_model_folder

    result = list(arguments)
    for index, argument in enumerate(result[:-1]):
        if argument == "--model_args":
            pairs = []
            for pair in result[index + 1].split(","):
                key, equals, value = pair.partition("=")
                pairs.append(f"{key}={base_model_folder(value)}" if key == "pretrained" and equals else pair)
            result[index + 1] = ",".join(pairs)
    return result


def run_harness(arguments: list[str]) -> int:
    """Run lm-eval's command line on ``arguments`` (as after ``lm-eval``) with STEER2EDIT registered; its exit code."""
    import steer2edit_peft  # noqa: F401 - registers the STEER2EDIT PEFT type

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        raise Steer2EditError(INSTALL_HINT) from error
    saved = sys.argv
    sys.argv = ["lm-eval", *with_loadable_models(arguments)]
    try:
        cli_evaluate()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0
