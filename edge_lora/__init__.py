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
    OutputPathError,
    UnknownAdapterError,
)
from .runtime.memory import MemoryUsage
from .runtime.speculative import Speculative

from ._version import __version__

#: names that load the native engine (llama-cpp-python and its libraries), imported on first
#: use: `import edge_lora` and `edge-lora doctor` work even where the libraries cannot load
_NATIVE = {
    "engine_summary": ".engine.summary", "Completion": ".runtime.request", "SamplingParams": ".runtime.request",
    "GenerationRequest": ".runtime.request",
    "Timings": ".runtime.request", "AdapterInfo": ".runtime.registry", "Runtime": ".runtime.runtime",
    "TextStream": ".runtime.request", "Session": ".runtime.session",
}


def __getattr__(name: str) -> object:
    if name in _NATIVE:
        import importlib

        value = getattr(importlib.import_module(_NATIVE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# llama.cpp's log is routed into logging.getLogger("edge_lora.engine.native"); quiet unless configured
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AdapterInfo",
    "CancelToken",
    "CancelledError",
    "MemoryUsage",
    "Speculative",
    "Completion",
    "GenerationRequest",
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
    "OutputPathError",
    "__version__",
    "engine_summary",
]
