"""Third-party messages that would print on every import or call and say nothing useful to a steer2edit user."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (logger, a phrase of the message): each is harmless for steer2edit's use of that library. Both come from one
# place: with the optional `quantization` extra installed, PEFT's import imports bitsandbytes, which on CPUs with
# AVX512-BF16 looks a kernel up on the Hub (and says so offline, or when the kernel cannot load). The default install
# leaves bitsandbytes out, so there the lookup never happens.
_NOISE = (
    ("bitsandbytes.backends.cpu.ops", "kernels-community"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check"),
)


class _DropMatching(logging.Filter):
    def __init__(self, phrase: str) -> None:
        super().__init__()
        self.phrase = phrase

    def filter(self, record: logging.LogRecord) -> bool:
        return self.phrase not in record.getMessage()


def drop_import_noise() -> None:
    """Drop the one message of one third-party logger that PEFT's import triggers (installed before PEFT loads;
    a second call adds nothing)."""
    for name, phrase in _NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) and f.phrase == phrase for f in logger.filters):
            logger.addFilter(_DropMatching(phrase))


# PEFT probes `model.is_gradient_checkpointing`, which transformers 5 deprecates, on every PeftModel it builds.
_PEFT_PROBE_DEPRECATION = "`is_gradient_checkpointing` is deprecated"


def quiet_warnings() -> None:
    """Warning filters for steer2edit's own programs (the CLI, the demo), never installed by an import."""
    warnings.filterwarnings("ignore", message=_PEFT_PROBE_DEPRECATION, category=FutureWarning)


@contextmanager
def quiet_peft_wrapping() -> Iterator[None]:
    """Silences PEFT's deprecated probe while the library itself builds or loads a PeftModel; the caller's warning
    filters are restored on exit, so a user's own PEFT calls still warn as PEFT makes them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PEFT_PROBE_DEPRECATION, category=FutureWarning)
        yield
