"""The scale words, kept apart: one function computes each.

- ``alpha``, ``rank``: as configured per module.
- PEFT: ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA.
- MLX-LM: ``scale`` is a direct multiplier.
- llama.cpp: ``user_scale * alpha / rank`` with one alpha per file and each tensor's
  own rank (``alpha == 0`` means ``user_scale`` alone).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["b_fold_factor", "llama_cpp_scale", "mlx_scale", "peft_scale"]


def peft_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's effective multiplier of ``B @ A`` for one module."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def mlx_scale(lora_parameters: dict[str, Any]) -> float:
    """MLX-LM's effective multiplier: ``scale`` as written (no division by rank)."""
    return float(lora_parameters["scale"])


def b_fold_factor(effective_scale: float, file_alpha: float, rank: int) -> float:
    """What B must be multiplied by so that llama.cpp's rule yields ``effective_scale``.

    Per-module differences (rsLoRA, alpha_pattern, rank_pattern) cannot be expressed
    by one file-wide alpha, so they are folded into B exactly.
    """
    return effective_scale / llama_cpp_scale(file_alpha, rank)


def llama_cpp_scale(file_alpha: float, rank: int, user_scale: float = 1.0) -> float:
    """llama.cpp's multiplier of ``B @ A`` (``llama_adapter_lora_weight::get_scale``):
    ``user_scale * alpha / rank``, or ``user_scale`` alone when the file's alpha is 0."""
    return user_scale * file_alpha / rank if file_alpha else user_scale
