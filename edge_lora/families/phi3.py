"""Phi-3 and Phi-4 (GGUF ``phi3``): fused ``qkv_proj`` and ``gate_up_proj`` stay fused
(``attn_qkv``, ``ffn_up``), as llama.cpp's base converter keeps them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import MODEL_ARCH

from .base import Family


@dataclass(frozen=True)
class Phi3Family(Family):
    def write_hparams(self, writer: Any, config: Any) -> None:
        writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
        # 0 marks "no sliding window" (Phi-4); convert_hf_to_gguf always writes the key
        writer.add_sliding_window(config.sliding_window or 0)


PHI3 = Phi3Family(
    MODEL_ARCH.PHI3, ("phi3",), name_words=("phi-3", "phi3", "phi-4"),
    tree_example="model.layers.N.self_attn.qkv_proj, model.layers.N.mlp.gate_up_proj",
)

