"""The package's shape: no import cycle, small modules and functions (lint-imports checks the layers in CI)."""

import ast
from pathlib import Path

import grimp
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "steer2edit_peft"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("steer2edit_peft")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            # A package imports its own submodules (its __init__ re-exports them): that is no cycle.
            if imported.startswith(module + ".") or module.startswith(imported + "."):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert cycles == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_size_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    tree = ast.parse(f"def long():\n{body}\n")
    (node,) = tree.body
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES


@pytest.mark.parametrize("old", ["data", "files", "plots", "vllm_generation", "sweep", "calibration"])
def test_the_removed_import_paths_are_gone(old):
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"steer2edit_peft.{old}")


def test_reloading_a_module_fails_with_a_message_that_says_so():
    import importlib

    from peft import get_peft_model

    import steer2edit_peft.tuner.config as config_module
    from steer2edit_peft import Steer2EditConfig

    with pytest.raises(ImportError, match="cannot be reloaded"):
        importlib.reload(config_module)
    assert config_module.Steer2EditConfig is Steer2EditConfig  # the module as it was: everything keeps working
    from tiny_models import tiny_model

    get_peft_model(tiny_model("llama"), Steer2EditConfig(init_weights=False))


def test_importing_the_package_installs_no_warning_filter():
    import subprocess
    import sys

    code = (  # PEFT and transformers install filters of their own on import: only steer2edit's are compared
        "import warnings, peft, transformers, accelerate, tqdm; before = list(warnings.filters); "
        "import steer2edit_peft, steer2edit_peft.demo, steer2edit_peft.cli; print(warnings.filters == before)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
