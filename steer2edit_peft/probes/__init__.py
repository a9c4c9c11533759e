"""Probe data: built-in behaviours and prompt sets (written by the project), and probes from the model's own responses.

Data files shipped here:
  prompts/*.json              prompt sets written by the project (harmful and benign requests, questions)
  heldout/*.json              evaluation prompts, never used for probing
  generated/<model>/*.jsonl   the embedded model's own responses to the built-in prompts (scripts/generate-probes)
  *.jsonl                     hand-written contrastive pairs
"""

from .behaviours import BEHAVIOURS, Behaviour, builtin_prompts, get_behaviour
from .generate import generate_probe, generate_utility_data, shipped_file

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "builtin_prompts",
    "generate_probe",
    "generate_utility_data",
    "get_behaviour",
    "shipped_file",
]
