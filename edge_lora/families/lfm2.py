"""LFM2 / LFM2.5 (GGUF ``lfm2``): short-convolution layers between attention layers; LFM2-MoE
(``lfm2moe``; LFM2-8B-A1B): the same layers, MoE feed-forward blocks after the first dense ones.

No LoRA transforms (``conversion/lfm2.py::LFM2Model``): ``conv.in_proj`` (3 x hidden rows,
used as they are) and ``conv.out_proj`` map to ``shortconv.in_proj`` / ``out_proj``, the
attention output is ``self_attn.out_proj``, the MLP is ``feed_forward.w1/w3/w2``. Base-only:
the convolution kernel ``conv.conv`` is squeezed to 2-D, the final norm is ``embedding_norm``,
and a convolution layer has 0 KV heads (the per-layer array). LFM2-MoE exists only in
transformers 5: its experts are fused parameters of ``feed_forward.experts`` (``gate_up_proj``,
``down_proj``), its router the raw weight ``feed_forward.gate`` (``ffn_gate_inp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import MODEL_ARCH

from .base import GATED_EXPERTS, Family


@dataclass(frozen=True)
class Lfm2Family(Family):
    def hparam_overrides(self, config: Any) -> dict[str, Any]:
        return {
            "add_head_count_kv": [config.num_key_value_heads if t != "conv" else 0 for t in config.layer_types],
            "add_layer_norm_rms_eps": config.norm_eps,
            "add_feed_forward_length": _ff_dim(config),
        }

    def write_hparams(self, writer: Any, config: Any) -> None:
        writer.add_shortconv_l_cache(config.conv_L_cache)

    def base_tensor(self, hf_name: str, data: np.ndarray) -> np.ndarray:
        return data.squeeze(1) if ".conv.conv." in hf_name else data


def _ff_dim(config: Any) -> int:
    """``LFM2Model._add_feed_forward_length``: the MLP width as transformers sizes it."""
    ff = config.intermediate_size
    if config.block_auto_adjust_ff_dim:
        ff = int(2 * ff / 3)
        if config.block_ffn_dim_multiplier is not None:
            ff = int(config.block_ffn_dim_multiplier * ff)
        ff = config.block_multiple_of * ((ff + config.block_multiple_of - 1) // config.block_multiple_of)
    return ff


LFM2 = Lfm2Family(
    MODEL_ARCH.LFM2, ("lfm2",), name_words=("lfm2",),
    module_tree=re.compile(r"^(?:model\.layers\.\d+\.[A-Za-z0-9_.]+|model\.embed_tokens|model\.embedding_norm|lm_head)$"),
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|conv\.(?:in|out)_proj"
                            r"|feed_forward\.w[123])|model\.embed_tokens|lm_head)$"),
    tree_example="model.layers.N.conv.in_proj, model.layers.N.self_attn.q_proj, model.layers.N.feed_forward.w1",
)

LFM2MOE = Family(
    MODEL_ARCH.LFM2MOE, ("lfm2_moe",), name_words=("lfm2-8b-a1b", "lfm2_moe", "lfm2-moe"),
    module_tree=LFM2.module_tree,
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|conv\.(?:in|out)_proj"
                            r"|feed_forward\.w[123]|feed_forward\.gate)|model\.embed_tokens|lm_head)$"),
    experts_path="model.layers.{bid}.feed_forward.experts", fused_experts=GATED_EXPERTS, router_module="feed_forward.gate",
    tree_example="model.layers.N.conv.in_proj, model.layers.N.feed_forward.experts (gate_up_proj), "
                 "model.layers.N.feed_forward.gate",
)
