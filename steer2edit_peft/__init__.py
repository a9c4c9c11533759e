"""steer2edit-peft: activation-steering vectors turned into sparse rank-1 weight edits, as PEFT adapters."""

from .registration import register as _register

_register()

from .errors import AdapterValidationError, Steer2EditError, UnknownArchitectureError  # noqa: E402
from .tuner import FORMAT_VERSION, Steer2EditConfig, Steer2EditModel  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "FORMAT_VERSION",
    "AdapterValidationError",
    "Steer2EditConfig",
    "Steer2EditError",
    "Steer2EditModel",
    "UnknownArchitectureError",
    "__version__",
]
