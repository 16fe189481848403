"""Masked FER Studio engine: masks, faces, models, protocols, training, evaluation, explanations."""

__version__ = "0.1.0"
