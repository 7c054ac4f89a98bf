"""Qwen2, Qwen2.5 (GGUF ``qwen2``) and Qwen3 (``qwen3``): the decoder tree as it is."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import Family

QWEN2 = Family(MODEL_ARCH.QWEN2, ("qwen2",), name_words=("qwen2",))
QWEN3 = Family(MODEL_ARCH.QWEN3, ("qwen3",), name_words=("qwen3",))
