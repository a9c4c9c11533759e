"""The Steer2Edit PEFT tuner, in PEFT's layout: config, layer, model."""

from .config import FORMAT_VERSION, Steer2EditConfig
from .layer import Linear, Steer2EditLayer
from .model import Steer2EditModel

__all__ = ["FORMAT_VERSION", "Linear", "Steer2EditConfig", "Steer2EditLayer", "Steer2EditModel"]
