"""Checkpoints: safetensors weights plus a JSON config, never pickles.

schema.py is config.json, layout.py how tensors sit in weights.safetensors, files.py reading and writing
a version directory.
"""

from .files import CONFIG_FILE, PICKLE_SUFFIXES, WEIGHTS_FILE, load, read_config, save, write_config
from .schema import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    CheckpointConfig,
    CheckpointError,
    Standardisation,
    TrainingRecord,
)

__all__ = [
    "CONFIG_FILE",
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "PICKLE_SUFFIXES",
    "WEIGHTS_FILE",
    "CheckpointConfig",
    "CheckpointError",
    "Standardisation",
    "TrainingRecord",
    "load",
    "read_config",
    "save",
    "write_config",
]
