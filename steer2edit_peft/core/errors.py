"""The errors steer2edit raises: each names the module or file and the problem."""


class Steer2EditError(ValueError):
    """Base class of steer2edit's errors."""


class UnknownArchitectureError(Steer2EditError):
    """The model family's output projections are unknown; target modules must be passed by hand."""


class AdapterValidationError(Steer2EditError):
    """A saved or given edit does not fit the model, or its tensors are malformed."""


class EmptyEditError(Steer2EditError):
    """The elastic net kept no component: the edit would change nothing."""


class DataError(Steer2EditError):
    """Probe, prompt or utility data is empty, one-sided or malformed."""
