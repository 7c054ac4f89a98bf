"""Llama 2, Llama 3.x, Mistral and Mixtral: GGUF ``llama``; SmolLM3: ``smollm3``.

llama.cpp's base converter permutes the rows of Q and K for its rope layout
(``convert_hf_to_gguf.LlamaModel.permute``); a LoRA on them must have B's rows permuted the
same way, and an export must undo it, both with the base's head counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from gguf import MODEL_ARCH, MODEL_TENSOR

from .base import GATED_EXPERTS, Family, RowTransform


def permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.LlamaModel.permute), on axis 0."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_PERMUTED = (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K)


@dataclass(frozen=True)
class LlamaFamily(Family):
    def row_transform(self, ttype: MODEL_TENSOR, n_head: int | None, n_head_kv: int | None) -> RowTransform | None:
        if ttype not in _PERMUTED or n_head is None:
            return None
        kv = n_head if ttype == MODEL_TENSOR.ATTN_Q else n_head_kv
        return lambda w: permute_rows(w, n_head, kv)

    def needs_head_counts(self, ttype: MODEL_TENSOR) -> bool:
        return ttype in _PERMUTED


#: Mixtral is GGUF llama with experts: transformers 4's ``block_sparse_moe.experts.E.w1/w2/w3`` stacked into
#: ``ffn_gate/down/up_exps`` (``LlamaModel.modify_tensors``), the router ``block_sparse_moe.gate`` (both read);
#: transformers 5's ``mlp.experts.gate_up_proj``/``down_proj`` and router ``mlp.gate`` (written back)
LLAMA = LlamaFamily(
    MODEL_ARCH.LLAMA, ("llama", "mistral", "mixtral"), name_words=("llama", "mistral", "mixtral"),
    expert_modules=re.compile(r"^(model\.layers\.\d+\.(?:block_sparse_moe|mlp)\.experts)\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)$"),
    extra_hparams=(("add_expert_count", "num_local_experts"), ("add_expert_used_count", "num_experts_per_tok")),
    router_module="mlp.gate", fused_experts=GATED_EXPERTS,
)
#: SmolLM3: llama's converter class (Q/K permuted on every layer, the NoPE ones too: llama.cpp
#: skips rope on every 4th layer itself, ``n_no_rope_layer_step``)
SMOLLM3 = LlamaFamily(MODEL_ARCH.SMOLLM3, ("smollm3",), name_words=("smollm3",))
#: Ministral 3, Mistral Small 3.x, Magistral: llama's converter class (``conversion/mistral3.py``), so
#: Q/K permuted; older conversions of the same models wrote ``llama``, and their adapters fit as they are
MISTRAL3 = LlamaFamily(MODEL_ARCH.MISTRAL3, ("mistral3", "ministral3"),
                       name_words=("ministral-3", "mistral-small-3", "magistral"), adapter_archs=("llama",))
