"""The `steer2edit` command line: ``main`` runs it (``python -m steer2edit_peft.cli`` does too)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
