"""Probe data: ContrastiveDataset and its file formats, built-in behaviours and prompt sets (written by the
project), and probes from the model's own responses.

Data files shipped in data/:
  prompts/*.json              prompt sets written by the project (harmful and benign requests, questions)
  generated/<model>/*.jsonl   the embedded model's own responses to the built-in prompts (scripts/generate-probes)
  *.jsonl                     hand-written contrastive pairs
Evaluation prompts, never used for probing, live in steer2edit_peft/evaluation/data.
"""

from .behaviours import BEHAVIOURS, Behaviour, get_behaviour
from .datasets import (
    ContrastiveDataset,
    ContrastiveExample,
    UtilityData,
    builtin_probe,
    builtin_prompts,
    load_probe,
    load_prompts,
)
from .generate import (
    builtin_probe_data,
    builtin_utility_data,
    generate_probe,
    generate_utility_data,
    reference_data,
    shipped_file,
)

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "ContrastiveDataset",
    "ContrastiveExample",
    "UtilityData",
    "builtin_probe",
    "builtin_probe_data",
    "builtin_utility_data",
    "reference_data",
    "builtin_prompts",
    "generate_probe",
    "generate_utility_data",
    "get_behaviour",
    "load_probe",
    "load_prompts",
    "shipped_file",
]
