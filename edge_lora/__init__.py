"""edge-lora: run LoRA fine-tunes on laptops, over one quantized GGUF base."""

from __future__ import annotations

import logging

from .cancel import CancelToken
from .errors import (
    CancelledError,
    CheckpointError,
    ContextOverflowError,
    ConversionError,
    EdgeLoraError,
    EngineBuildError,
    GGUFFileError,
    IncompatibleAdapterError,
    InvalidRequestError,
    MissingDependencyError,
    NativeError,
    NonFiniteLogitsError,
    OutputExistsError,
    UnknownAdapterError,
)
from .engine.summary import engine_summary
from .generate import Completion, SamplingParams, Timings
from .memory import MemoryUsage
from .registry import AdapterInfo
from .runtime import Runtime, TextStream
from .session import Session

__version__ = "0.1.0"

# llama.cpp's log is routed into logging.getLogger("edge_lora.engine.native"); quiet unless configured
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AdapterInfo",
    "CancelToken",
    "CancelledError",
    "MemoryUsage",
    "Completion",
    "ContextOverflowError",
    "InvalidRequestError",
    "NativeError",
    "NonFiniteLogitsError",
    "Runtime",
    "SamplingParams",
    "Session",
    "TextStream",
    "Timings",
    "UnknownAdapterError",
    "CheckpointError",
    "ConversionError",
    "EdgeLoraError",
    "EngineBuildError",
    "GGUFFileError",
    "IncompatibleAdapterError",
    "MissingDependencyError",
    "OutputExistsError",
    "__version__",
    "engine_summary",
]
