"""Tests that run real inference engines (llama.cpp, vLLM). They run on the engines lane (`bash .ci/engines`),
which installs the engines first and sets STEER2EDIT_ENGINES=1; there a missing engine fails, it is never skipped.
The plain test run leaves them out."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers in tests/

if os.environ.get("STEER2EDIT_ENGINES") != "1":
    collect_ignore_glob = ["test_*.py"]
