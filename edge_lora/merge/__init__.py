"""Merging LoRA adapters into a GGUF base (``edge-lora merge``), and the in-memory LoRA form
that merge, combine and export share (:mod:`.source`)."""

from __future__ import annotations

from .source import LoraSource, LoraWeight, lora_delta, read_gguf_lora
from .model_merge import MergedTensor, MergeResult, merge
from .spec import parse_adapter_arg
from .tensor_types import OUTTYPES

__all__ = [
    "OUTTYPES", "MergeResult", "MergedTensor", "merge",
    "LoraSource", "LoraWeight", "lora_delta", "parse_adapter_arg", "read_gguf_lora"]
