"""Settings for every test process (subprocesses inherit them)."""

import os

# MKL picks its thread count per call when dynamic, so on a loaded machine a float32 matmul can sum in another
# order than on an idle one; near-tie greedy tokens of the tiny random models then flip. Fixed threads: same sums.
# The engines lane keeps MKL's default: its checks have tolerances, and fixed threads slow the real engines.
if not os.environ.get("STEER2EDIT_ENGINES"):
    os.environ.setdefault("MKL_DYNAMIC", "FALSE")
    os.environ.setdefault("OMP_DYNAMIC", "FALSE")
