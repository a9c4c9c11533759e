"""matplotlib, set up for files only, and saving a figure under the name it was given.

matplotlib is an optional dependency (``pip install steer2edit-peft[plots]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Steer2EditError
from .files import new_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed, or wanted on servers
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise Steer2EditError("plots need matplotlib: pip install 'steer2edit-peft[plots]'") from error
    return plt


IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


def check_image_path(path: str | Path, overwrite: bool = True) -> Path:
    """The path of an image to write: it must name its format (.png, .svg or .pdf), so the file written is the one
    named, and must not exist unless ``overwrite``; checked before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise Steer2EditError(f"{path}: name the image with one of {', '.join(IMAGE_SUFFIXES)}")
    if not overwrite and os.path.lexists(path):
        raise Steer2EditError(f"{path} exists; choose another name or pass --overwrite")
    return path


def save_figure(figure: Figure, path: str | Path, overwrite: bool = True) -> Path:
    """Save a figure as one whole file (core/files.py), in the format its name says."""
    try:
        path = check_image_path(path, overwrite)
        with new_file(path, overwrite) as temporary:
            figure.savefig(temporary, dpi=120, format=path.suffix.lower().removeprefix("."))
    finally:
        pyplot().close(figure)
    return path
