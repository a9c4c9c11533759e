"""Peak memory of extraction as the probe data grows: it must stay flat (running sums, no stored activations).

python benchmarks/memory.py [--sizes 32 128 512 2048]

Each size runs in a fresh process (Linux): the peak resident size is reset after the model is loaded, and the
figure is how far it rises above the resident size during extraction.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import save_results

CHILD = """
import json, sys, torch
sys.path.insert(0, {here!r})
from extraction import probe
from steer2edit_peft import ContrastiveDataset, extract_steering_vectors
from steer2edit_peft.core.models import load_model
model, tokenizer = load_model()
# The same 32 examples repeated: the data grows while batch shapes stay the same.
dataset = ContrastiveDataset(list(probe(32)) * ({size} // 32))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current resident size
before = status("VmRSS")
extract_steering_vectors(model, tokenizer, dataset, batch_size=16, show_progress=False)
print(json.dumps({{"rss_before_kib": before, "peak_during_kib": status("VmHWM")}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512, 2048])
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    rows = {}
    for size in args.sizes:
        output = (
            subprocess.run(
                [sys.executable, "-c", CHILD.format(here=here, size=size)], capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        values = json.loads(output)
        growth = (values["peak_during_kib"] - values["rss_before_kib"]) / 1024
        rows[size] = {**values, "extraction_growth_mib": growth}
        print(
            f"{size:5} examples: peak grows by {growth:7.1f} MiB during extraction (peak {values['peak_during_kib'] / 1024:.0f} MiB)"
        )
    save_results("memory", rows)


if __name__ == "__main__":
    main()
