"""steer2edit-peft: activation-steering vectors turned into sparse rank-1 weight edits, as PEFT adapters."""

from .core.quiet import drop_import_noise as _drop_import_noise

_drop_import_noise()  # before PEFT is imported: the message comes from its import

from .tuner.registration import register as _register  # noqa: E402

_register()

from .core.errors import AdapterValidationError, DataError, Steer2EditError, UnknownArchitectureError  # noqa: E402
from .core.settings import DEFAULTS, GATES, PAPER, EditSettings, defaults_for  # noqa: E402
from .extraction import SteeringVectors, extract_steering_vectors, steer  # noqa: E402
from .probes import ContrastiveDataset, ContrastiveExample, UtilityData, builtin_probe  # noqa: E402
from .solver import edit_model, elastic_net_magnitude, solve_edit  # noqa: E402
from .tuner import FORMAT_VERSION, Steer2EditConfig, Steer2EditModel  # noqa: E402
from .tuner.report import EditReport, edit_report  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "DEFAULTS",
    "GATES",
    "FORMAT_VERSION",
    "PAPER",
    "AdapterValidationError",
    "ContrastiveDataset",
    "ContrastiveExample",
    "DataError",
    "EditReport",
    "EditSettings",
    "Steer2EditConfig",
    "Steer2EditError",
    "Steer2EditModel",
    "SteeringVectors",
    "UnknownArchitectureError",
    "UtilityData",
    "__version__",
    "builtin_probe",
    "defaults_for",
    "edit_model",
    "edit_report",
    "elastic_net_magnitude",
    "extract_steering_vectors",
    "solve_edit",
    "steer",
]
