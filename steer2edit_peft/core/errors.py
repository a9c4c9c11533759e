"""The errors steer2edit raises: each names the module or file and the problem."""


def refuse_reload(namespace: dict) -> None:
    """Called by a module before it defines its classes: a second run of the module (``importlib.reload``) would make
    new classes that the adapters, configs and errors already made are not instances of, so it raises instead."""
    if namespace.get("__steer2edit_loaded__"):
        raise ImportError(
            f"{namespace['__name__']} cannot be reloaded: its classes are registered with PEFT and held by the "
            "adapters already made, which a reload would leave behind; restart Python to load changed code"
        )
    namespace["__steer2edit_loaded__"] = True


refuse_reload(globals())


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
