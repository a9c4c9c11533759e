"""Hooks and running means -> SteeringVectors, and the activation-steering baseline that adds them back."""

from .extract import edited_modules, extract_steering_vectors
from .steering import steer
from .vectors import SteeringVectors

__all__ = ["SteeringVectors", "edited_modules", "extract_steering_vectors", "steer"]
