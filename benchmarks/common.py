"""Shared helpers for the benchmarks: the machine, interleaved timing, data from ../shared, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "date": date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds per candidate, timed round-robin so machine noise hits every candidate alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def overheads(seconds: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per shape, every candidate's time over the base's, minus one."""
    return {
        shape: {name: value / times["base"] - 1 for name, value in times.items()} for shape, times in seconds.items()
    }


def print_timings(seconds: dict[str, dict[str, float]], shapes: dict[str, tuple[int, int]]) -> None:
    """One table per shape: milliseconds and the overhead over the base, candidates in their order."""
    width = max(len(name) for times in seconds.values() for name in times) + 2
    for shape, times in seconds.items():
        print(f"{shape} {shapes[shape][0]} x {shapes[shape][1]}:")
        for name, value in times.items():
            print(f"  {name:<{width}} {value * 1000:8.2f} ms  {100 * (value / times['base'] - 1):+6.1f}% vs base")


@contextmanager
def written(values: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Each (weight or a view of it, new value) written in place, the old values put back on exit: a peer or a
    candidate edit applied to a plain model for the length of a measurement."""
    saved = [tensor.detach().clone() for tensor, _ in values]
    with torch.no_grad():
        for tensor, value in values:
            tensor.copy_(value.to(tensor))
    try:
        yield
    finally:
        with torch.no_grad():
            for (tensor, _), old in zip(values, saved):
                tensor.copy_(old)


def save_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"wrote {path}")
    return path


def advbench_goals() -> list[str]:
    import csv

    with open(SHARED / "advbench" / "harmful_behaviors.csv", newline="", encoding="utf-8") as handle:
        return [row["goal"] for row in csv.DictReader(handle)]


def alpaca_instructions() -> list[str]:
    lines = (SHARED / "alpaca" / "benign_instructions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["instruction"] for line in lines if line.strip()]
