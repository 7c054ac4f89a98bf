"""edge-lora: run LoRA fine-tunes on laptops, over one quantized GGUF base."""

from __future__ import annotations

from .errors import (
    CheckpointError,
    ConversionError,
    EdgeLoraError,
    GGUFFileError,
    IncompatibleAdapterError,
    MissingDependencyError,
    OutputExistsError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConversionError",
    "EdgeLoraError",
    "GGUFFileError",
    "IncompatibleAdapterError",
    "MissingDependencyError",
    "OutputExistsError",
    "__version__",
]
