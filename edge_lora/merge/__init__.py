"""Merging LoRA adapters into a GGUF base (``edge-lora merge``). The in-memory LoRA form that
merge, combine and export share lives in :mod:`edge_lora.lora` (re-exported here)."""

from __future__ import annotations

from ..lora.adapter import LoraSource, read_gguf_lora
from ..lora.pair import LoraPair
from .model_merge import MergedTensor, MergeResult, merge
from .tensor_types import OUTTYPES

#: the name this type had before it moved to :mod:`edge_lora.lora.pair`
LoraWeight = LoraPair

__all__ = ["OUTTYPES", "MergeResult", "MergedTensor", "merge", "LoraPair", "LoraSource", "LoraWeight", "read_gguf_lora"]
