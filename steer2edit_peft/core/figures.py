"""matplotlib, set up for files only, and saving a figure under the name it was given.

matplotlib is an optional dependency (``pip install steer2edit-peft[plots]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import Steer2EditError

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


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save a figure; the path must name its format (.png, .svg or .pdf), so the file written is the one named."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        pyplot().close(figure)
        raise Steer2EditError(f"{path}: name the image with one of {', '.join(IMAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    pyplot().close(figure)
    return path
