"""Settings for every test process (subprocesses inherit them)."""

import os

# MKL picks its thread count per call when dynamic, so on a loaded machine a float32 matmul can sum in another
# order than on an idle one; near-tie greedy tokens of the tiny random models then flip. Fixed threads: same sums.
# The engines lane keeps MKL's default: its checks have tolerances, and fixed threads slow the real engines.
if not os.environ.get("STEER2EDIT_ENGINES"):
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    os.environ.setdefault("OMP_DYNAMIC", "FALSE")

# Under pytest-xdist (pyproject.toml's addopts) the workers share the cores: each gets its share of threads, as
# oversubscribed torch threads spin and slow every worker down.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
