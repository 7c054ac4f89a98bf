"""gpt-oss (GGUF ``gpt-oss``; openai/gpt-oss-20b, -120b): a MoE decoder whose experts exist only
as transformers' fused 3-D parameters, stored (E, in, out) and multiplied as ``x @ W[e]``
(``GptOssExperts``, ``is_transposed``), with gate and up interleaved row by row (``gate =
gate_up[..., ::2]``): ``conversion/gpt_oss.py`` transposes them and splits gate and up by
alternate rows; the biases likewise (base-only). The router ``mlp.router`` (``ffn_gate_inp``,
with a bias) and the attention (with biases and per-head sinks, ``attn_sinks``) are as named.
llama.cpp multiplies every expert with ``build_lora_mm_id``: LoRA on experts, attention and the
router applies."""

from __future__ import annotations

import re
from gguf import MODEL_ARCH

from .base import Family, FusedExperts

GPT_OSS = Family(
    MODEL_ARCH.GPT_OSS, ("gpt_oss",), name_words=("gpt-oss", "gpt_oss"),
    fused_experts=(FusedExperts("gate_up_proj", ("gate_proj", "up_proj"), interleaved=True, transposed=True),
                   FusedExperts("gate_up_proj_bias", ("gate_proj", "up_proj"), interleaved=True, bias=True),
                   FusedExperts("down_proj", ("down_proj",), transposed=True),
                   FusedExperts("down_proj_bias", ("down_proj",), bias=True)),
    router_module="mlp.router",
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.router)|model\.embed_tokens|lm_head)$"),
    extra_hparams=(("add_expert_count", "num_local_experts"), ("add_expert_used_count", "num_experts_per_tok"),
                   ("add_sliding_window", "sliding_window"), ("add_expert_feed_forward_length", "intermediate_size")),
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.mlp.experts (gate_up_proj), model.layers.N.mlp.router",
)
