"""steer2edit-peft: activation-steering vectors turned into sparse rank-1 weight edits, as PEFT adapters."""

from .quiet import quiet_third_party_noise as _quiet

_quiet()

from .registration import register as _register  # noqa: E402

_register()

from .data import ContrastiveDataset, ContrastiveExample, DataError, builtin_probe  # noqa: E402
from .errors import AdapterValidationError, Steer2EditError, UnknownArchitectureError  # noqa: E402
from .extraction import extract_steering_vectors  # noqa: E402
from .report import EditReport, edit_report  # noqa: E402
from .solver import edit_model, elastic_net_magnitude, solve_edit  # noqa: E402
from .steering import steer  # noqa: E402
from .tuner import FORMAT_VERSION, Steer2EditConfig, Steer2EditModel  # noqa: E402
from .vectors import SteeringVectors  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "AdapterValidationError",
    "ContrastiveDataset",
    "ContrastiveExample",
    "DataError",
    "EditReport",
    "Steer2EditConfig",
    "Steer2EditError",
    "Steer2EditModel",
    "SteeringVectors",
    "UnknownArchitectureError",
    "__version__",
    "builtin_probe",
    "edit_model",
    "edit_report",
    "elastic_net_magnitude",
    "extract_steering_vectors",
    "solve_edit",
    "steer",
]
