"""IBM Granite 3.x dense (GGUF ``granite``) and MoE (``granitemoe``; granite-3.x-1b-a400m, -3b-a800m):
llama's converter class, so Q/K rows are permuted; and
Granite 4 hybrid (``granitehybrid``; granite-4.0-h-micro, -h-tiny, -h-small): Mamba-2 layers between
attention layers, MoE experts beside a shared MLP.

Granite's multipliers (``attention_multiplier``, ``embedding_multiplier``,
``residual_multiplier``, ``logits_scaling``) are written as hyperparameters and act on
activations, LoRA-inclusive outputs, in transformers and llama.cpp alike
(``src/models/granite.cpp``): a LoRA needs no transform for them. The base converter drops
``head_dim`` (Granite has none). Dense Granite 4 is written as ``granite`` too, its shared MLP
split as below (plain ``ffn_gate``/``ffn_up``/``ffn_down``).

Granite 4 (``conversion/granite.py::GraniteHybridModel``, Q/K permuted too): ``mamba.in_proj`` and
``mamba.out_proj`` are ``ssm_in``/``ssm_out`` as they are (``conv1d``, ``A_log``, ``D`` and the norm
are base-only); the shared MLP's ``input_linear`` is split by rows into ``ffn_gate_shexp`` and
``ffn_up_shexp`` (plain ``ffn_gate``/``ffn_up`` without experts), so its LoRA keeps A and splits
B; ``output_linear`` is ``ffn_down_shexp`` (``ffn_down``). The experts are transformers 5's fused
parameters of ``block_sparse_moe.experts``, the router the raw ``block_sparse_moe.router`` weight:
names gguf-py's table lacks (the converter writes them itself), so the family carries them.
"""

from __future__ import annotations

import re

from gguf import MODEL_ARCH, MODEL_TENSOR as T, Keys

from .base import GATED_EXPERTS
from .llama import LlamaFamily

#: Granite 3.x, and dense Granite 4 (granite-4.0-micro: transformers' GraniteMoeHybrid with only attention
#: layers, which the converter writes as ``granite``, its shared MLP as ``ffn_gate``/``ffn_up``/``ffn_down``)
GRANITE = LlamaFamily(
    MODEL_ARCH.GRANITE, ("granite",), name_words=("granite",),
    extra_hparams=(("add_attention_scale", "attention_multiplier"), ("add_embedding_scale", "embedding_multiplier"),
                   ("add_residual_scale", "residual_multiplier"), ("add_logit_scale", "logits_scaling")),
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj"
                            r"|shared_mlp\.output_linear)|model\.embed_tokens|lm_head)$"),
    extra_names=(("shared_mlp.output_linear", T.FFN_DOWN),),
    split_modules=(("shared_mlp.input_linear", ((T.FFN_GATE, T.FFN_UP),)),),
    extras_marker=Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH,
)

GRANITEHYBRID = LlamaFamily(
    MODEL_ARCH.GRANITE_HYBRID, ("granitemoehybrid",), name_words=("granite-4.0-h", "granite-4.1-h", "bamba"),
    extra_hparams=GRANITE.extra_hparams,
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mamba\.(?:in|out)_proj"
                            r"|shared_mlp\.output_linear|block_sparse_moe\.router)|model\.embed_tokens|lm_head)$"),
    experts_path="model.layers.{bid}.block_sparse_moe.experts", fused_experts=GATED_EXPERTS,
    router_module="block_sparse_moe.router",
    extra_names=(("block_sparse_moe.router", T.FFN_GATE_INP), ("block_sparse_moe.experts.gate_proj", T.FFN_GATE_EXP),
                 ("block_sparse_moe.experts.up_proj", T.FFN_UP_EXP),
                 ("block_sparse_moe.experts.down_proj", T.FFN_DOWN_EXP)),
    split_modules=(("shared_mlp.input_linear", ((T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP), (T.FFN_GATE, T.FFN_UP))),),
    tree_example="model.layers.N.mamba.in_proj, model.layers.N.self_attn.q_proj, model.layers.N.shared_mlp.input_linear",
)

#: Granite 3 MoE: Granite's attention and multipliers, transformers 5's fused experts and raw-weight
#: router under ``block_sparse_moe`` (names the family carries, as Granite 4's)
GRANITEMOE = LlamaFamily(
    MODEL_ARCH.GRANITE_MOE, ("granitemoe",), name_words=("granite-3.0-1b-a400m", "granite-3.0-3b-a800m",
                                                         "granite-3.1-1b-a400m", "granite-3.1-3b-a800m", "granitemoe"),
    extra_hparams=GRANITE.extra_hparams,
    lora_modules=re.compile(r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|block_sparse_moe\.router)"
                            r"|model\.embed_tokens|lm_head)$"),
    experts_path=GRANITEHYBRID.experts_path, fused_experts=GATED_EXPERTS, router_module="block_sparse_moe.router",
    extra_names=GRANITEHYBRID.extra_names,
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.block_sparse_moe.experts (gate_up_proj)",
)
