"""Figures the engine tests measure: printed, and appended to $STEER2EDIT_ENGINE_REPORT (JSON lines) for
BENCHMARKS.md when the lane sets it."""

from __future__ import annotations

import json
import os
from typing import Any


def report(name: str, value: Any) -> None:
    print(json.dumps({name: value}))
    out = os.environ.get("STEER2EDIT_ENGINE_REPORT")
    if out:
        with open(out, "a") as handle:
            handle.write(json.dumps({name: value}) + "\n")
