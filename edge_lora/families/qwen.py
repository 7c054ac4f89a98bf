"""Qwen2, Qwen2.5 (GGUF ``qwen2``), Qwen3 (``qwen3``) and Qwen3-MoE (``qwen3moe``): the decoder
tree as it is. Qwen3-MoE's experts are one ``nn.Linear`` per expert in transformers 4
(``mlp.experts.E.{gate,up,down}_proj``), stacked by the base converter into ``ffn_*_exps``
(``conversion/qwen.py::Qwen2MoeModel``); the router ``mlp.gate`` is ``ffn_gate_inp``."""

from __future__ import annotations

import re

from gguf import MODEL_ARCH

from .base import GATED_EXPERTS, Family

QWEN2 = Family(MODEL_ARCH.QWEN2, ("qwen2",), name_words=("qwen2",))
QWEN3 = Family(MODEL_ARCH.QWEN3, ("qwen3",), name_words=("qwen3",))
QWEN3MOE = Family(
    MODEL_ARCH.QWEN3MOE, ("qwen3_moe",), name_words=("qwen3-moe", "qwen3_moe", "qwen3moe", "-a3b", "-a22b"),
    expert_modules=re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)$"),
    extra_hparams=(("add_expert_count", "num_experts"), ("add_expert_used_count", "num_experts_per_tok"),
                   ("add_expert_feed_forward_length", "moe_intermediate_size")),
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.mlp.experts.E.up_proj, model.layers.N.mlp.gate",
    fused_experts=GATED_EXPERTS,
)
#: Qwen1.5/Qwen2-MoE: Qwen3-MoE's experts and router, plus a shared expert (``mlp.shared_expert.*``,
#: ``ffn_*_shexp``) whose output a sigmoid gate scales (``mlp.shared_expert_gate``, ``ffn_gate_inp_shexp``)
QWEN2MOE = Family(
    MODEL_ARCH.QWEN2MOE, ("qwen2_moe",), name_words=("qwen2-moe", "qwen2_moe", "qwen1.5-moe", "-a2.7b", "-a14b"),
    expert_modules=QWEN3MOE.expert_modules, fused_experts=GATED_EXPERTS,
    extra_hparams=QWEN3MOE.extra_hparams + (("add_expert_shared_feed_forward_length", "shared_expert_intermediate_size"),),
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.gate"
                            r"|mlp\.shared_expert\.(?:gate|up|down)_proj|mlp\.shared_expert_gate)|model\.embed_tokens|lm_head)$"),
)
