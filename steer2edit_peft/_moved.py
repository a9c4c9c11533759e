"""Import paths of steer2edit-peft 0.x before the stage packages, kept working for one release.

``import steer2edit_peft.solver_like_old_name`` finds the names where they live now, with a DeprecationWarning
that names the new module.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# old module -> the modules its names live in now (the first is the one the warning names)
OLD_PATHS = {
    "architectures": ("core.architectures",),
    "calibration": ("solver.calibrate",),
    "data": ("probes.datasets", "core.tokens", "core.errors", "evaluation.prompts"),
    "errors": ("core.errors",),
    "files": ("core.files",),
    "generation": ("core.generation",),
    "harness": ("cli.lm_eval",),
    "hub": ("export.hub", "evaluation.suite"),
    "judges": ("core.judges",),
    "likelihood": ("core.likelihood",),
    "models": ("core.models",),
    "plots": ("evaluation.plots", "tuner.heatmap", "core.figures"),
    "registration": ("tuner.registration",),
    "report": ("tuner.report",),
    "sanity": ("solver.sanity",),
    "steering": ("extraction.steering",),
    "sweep": ("evaluation.sweep", "solver.settings"),
    "vectors": ("extraction.vectors",),
    "vllm_generation": ("export.vllm",),
}
_PACKAGE = __name__.rpartition(".")[0]


class _OldPath(types.ModuleType):
    def __init__(self, name: str, homes: tuple[str, ...]) -> None:
        super().__init__(name)
        self._homes = homes

    def __getattr__(self, attribute: str) -> Any:
        for home in self._homes:
            module = importlib.import_module(f"{_PACKAGE}.{home}")
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} (now {_PACKAGE}.{self._homes[0]}) has no {attribute!r}")


class _OldPathLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.rpartition(".")[2]
        warnings.warn(
            f"{spec.name} moved to {_PACKAGE}.{OLD_PATHS[old][0]}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return _OldPath(spec.name, OLD_PATHS[old])

    def exec_module(self, module: types.ModuleType) -> None:
        return None


class _OldPathFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != _PACKAGE or old not in OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, _OldPathLoader())


def install() -> None:
    if not any(isinstance(finder, _OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(_OldPathFinder())
