"""Qwen3.5 / Qwen3.6 dense (GGUF ``qwen35``; Qwen/Qwen3.5-0.8B ... 27B) and MoE (``qwen35moe``;
Qwen3.5-35B-A3B, -122B-A10B): three gated-delta-net
(linear attention) layers, then one full-attention layer, repeated.

The linear-attention projections map to ``attn_qkv`` (``in_proj_qkv``, rows ``[q | k | v]``),
``attn_gate`` (``in_proj_z``), ``ssm_beta``/``ssm_alpha`` (``in_proj_b``/``in_proj_a``) and
``ssm_out`` (``out_proj``). When the model has more value heads V than key heads K, llama.cpp's
converter reorders the V heads from grouped by K head to tiled (``conversion/qwen.py``,
``_LinearAttentionVReorderBase._reorder_v_heads``: ``arange(n).reshape(K, V/K, d).transpose(0, 1)``)
in the V rows of ``in_proj_qkv`` (d = dv), all rows of ``in_proj_z`` (dv), of ``in_proj_b`` and
``in_proj_a`` (1), and the input columns of ``out_proj`` (dv): the LoRA follows (B's rows, A's
columns), from K, V, dk and V dv in the base (``{arch}.ssm.group_count``, ``time_step_rank``,
``state_size``, ``inner_size``). Full attention (its ``q_proj`` is twice as wide: query and gate
per head, split by llama.cpp) and the MLP are as named. ``conv1d`` is a convolution: no LoRA.
The MoE layers are Qwen2-MoE's: experts (transformers 5's fused ``gate_up_proj``/``down_proj``, or
per-expert modules), the router ``mlp.gate``, a shared expert and its sigmoid gate."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR, Keys

from .base import GATED_EXPERTS, Family, IndexTransform
from .qwen import QWEN2MOE

#: rows (or columns) llama.cpp reorders per tensor, and the head width d of each V head there
_V_HEADS = {MODEL_TENSOR.ATTN_QKV: "dv", MODEL_TENSOR.ATTN_GATE: "dv", MODEL_TENSOR.SSM_BETA: 1,
            MODEL_TENSOR.SSM_ALPHA: 1, MODEL_TENSOR.SSM_OUT: "dv"}


def v_head_order(n_k: int, n_v: int, d: int) -> np.ndarray:
    """llama.cpp's V-head reorder of ``n_v * d`` entries, grouped by K head to tiled:
    ``new = old[order]``."""
    return np.arange(n_v * d).reshape(n_k, n_v // n_k, d).transpose(1, 0, 2).reshape(-1)


@dataclass(frozen=True)
class Qwen35Family(Family):
    def needs_base_values(self, ttype: MODEL_TENSOR) -> bool:
        return ttype in _V_HEADS

    def base_transform(self, ttype: MODEL_TENSOR, value: Callable[[str], Any],
                       weight_shape: tuple[int, ...]) -> IndexTransform | None:
        if ttype not in _V_HEADS:
            return None
        n_k, n_v = int(value(Keys.SSM.GROUP_COUNT)), int(value(Keys.SSM.TIME_STEP_RANK))
        if n_k == n_v:
            return None
        d_k, d_v = int(value(Keys.SSM.STATE_SIZE)), int(value(Keys.SSM.INNER_SIZE)) // n_v
        order = v_head_order(n_k, n_v, d_v if _V_HEADS[ttype] == "dv" else 1)
        if ttype == MODEL_TENSOR.SSM_OUT:
            return IndexTransform(cols=order)
        if ttype == MODEL_TENSOR.ATTN_QKV:  # only the V rows, after q and k
            qk = 2 * n_k * d_k
            return IndexTransform(rows=np.concatenate([np.arange(qk), qk + order]))
        return IndexTransform(rows=order)


_LORA_MODULES = re.compile(
    r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|linear_attn\.(?:in_proj_qkv|in_proj_z|in_proj_a|in_proj_b"
    r"|out_proj)|mlp\.(?:gate|up|down)_proj)|model\.embed_tokens|lm_head)$")

QWEN35 = Qwen35Family(
    MODEL_ARCH.QWEN35, ("qwen3_5", "qwen3_5_text"), name_words=("qwen3.5", "qwen3_5", "qwen3.6", "qwen3_6"),
    lora_modules=_LORA_MODULES,
    tree_example="model.layers.N.linear_attn.in_proj_qkv, model.layers.N.self_attn.q_proj, model.layers.N.mlp.up_proj",
)

QWEN35MOE = Qwen35Family(
    MODEL_ARCH.QWEN35MOE, ("qwen3_5_moe", "qwen3_5_moe_text"),
    name_words=("qwen3.5-moe", "qwen3_5_moe", "qwen3.5-35b-a3b", "qwen3.5-122b", "qwen3.6-35b-a3b"),
    lora_modules=re.compile(
        r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|linear_attn\.(?:in_proj_qkv|in_proj_z|in_proj_a"
        r"|in_proj_b|out_proj)|mlp\.gate|mlp\.shared_expert\.(?:gate|up|down)_proj|mlp\.shared_expert_gate)"
        r"|model\.embed_tokens|lm_head)$"),
    expert_modules=QWEN2MOE.expert_modules, fused_experts=GATED_EXPERTS, extra_hparams=QWEN2MOE.extra_hparams,
    tree_example="model.layers.N.linear_attn.in_proj_qkv, model.layers.N.mlp.experts (gate_up_proj), model.layers.N.mlp.gate",
)
