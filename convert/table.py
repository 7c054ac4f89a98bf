"""The one table: checkpoint module names to GGUF tensor names, and per-architecture transforms.

Names come from gguf-py's ``TensorNameMap`` (the same table llama.cpp's converters
use); this module only adds what a LoRA converter needs on top: which GGUF
architectures are supported and proven by parity tests, and the row transforms
llama.cpp's base converter applied to a weight, which must be applied to LoRA B too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TensorNameMap

from edge_lora.formats.gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, WEIGHT_SUFFIX

__all__ = ["LORA_A_SUFFIX", "LORA_B_SUFFIX", "WEIGHT_SUFFIX", "ARCHS", "ArchSpec"]


#: the Hugging Face module tree of the decoder families below (LlamaForCausalLM and its
#: descendants): blocks under ``model.layers.N`` (``self_attn``, ``mlp`` and norms), the token
#: embedding ``model.embed_tokens``, the final ``model.norm`` and the head ``lm_head``. gguf-py's TensorNameMap is the union
#: of every family's names (``transformer.h.N.attn.q_proj`` of GPT-J maps to attn_q as well), so
#: a path must first belong to the base's own family.
HF_DECODER_TREE = re.compile(r"^(?:model\.layers\.\d+\.[A-Za-z0-9_.]+|model\.embed_tokens|model\.norm|lm_head)$")


@dataclass(frozen=True)
class ArchSpec:
    """What the converter must know about one GGUF architecture."""

    arch: MODEL_ARCH
    #: Hugging Face ``model_type`` values whose checkpoints convert to this GGUF arch
    hf_model_types: tuple[str, ...]
    #: llama.cpp's base converter permutes Q/K rows for GPT-J style rope (LlamaModel.permute)
    permute_qk: bool = False
    #: the module paths of this family's Hugging Face models (see HF_DECODER_TREE)
    module_tree: re.Pattern[str] = HF_DECODER_TREE
    #: how the module tree looks, for messages
    tree_example: str = "model.layers.N.self_attn.q_proj, model.layers.N.mlp.up_proj"

    @property
    def name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(MODEL_ARCH.LLAMA, ("llama", "mistral"), permute_qk=True),
        ArchSpec(MODEL_ARCH.QWEN2, ("qwen2",)),
        ArchSpec(MODEL_ARCH.QWEN3, ("qwen3",)),
        ArchSpec(MODEL_ARCH.GEMMA2, ("gemma2",)),
        ArchSpec(MODEL_ARCH.GEMMA3, ("gemma3", "gemma3_text")),
        ArchSpec(MODEL_ARCH.PHI3, ("phi3",), tree_example="model.layers.N.self_attn.qkv_proj, model.layers.N.mlp.gate_up_proj"),
    )
}

#: every Hugging Face name gguf-py knows for an output (lm_head) layer
OUTPUT_MODULE_NAMES: frozenset[str] = frozenset(TensorNameMap.mappings_cfg[MODEL_TENSOR.OUTPUT])


def arch_spec(name: str) -> ArchSpec | None:
    """The spec for a GGUF architecture name or a Hugging Face model_type, if supported."""
    if name in ARCHS:
        return ARCHS[name]
    for spec in ARCHS.values():
        if name in spec.hf_model_types:
            return spec
    return None


def supported_arch_names() -> list[str]:
    return sorted(ARCHS)


_name_maps: dict[tuple[MODEL_ARCH, int], TensorNameMap] = {}


def gguf_tensor_for(spec: ArchSpec, module: str, n_layers: int) -> tuple[MODEL_TENSOR, str] | None:
    """Map a checkpoint module path (``model.layers.3.self_attn.q_proj``) to its GGUF tensor.

    Returns ``(tensor type, "blk.3.attn_q.weight")`` or None when the name is unknown
    for this architecture or not in its family's module tree.
    """
    if not spec.module_tree.match(module):
        return None
    key = (spec.arch, n_layers)
    if key not in _name_maps:
        _name_maps[key] = TensorNameMap(spec.arch, n_layers)
    found = _name_maps[key].get_type_and_name(module, try_suffixes=(WEIGHT_SUFFIX,))
    if found is None:
        return None
    ttype, name = found
    if ttype not in MODEL_TENSORS[spec.arch]:
        return None
    return ttype, name + WEIGHT_SUFFIX


def permute_rows(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.LlamaModel.permute), on axis 0."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def row_transform(
    spec: ArchSpec, ttype: MODEL_TENSOR, n_head: int | None, n_head_kv: int | None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The transform the base converter applied to this weight's output rows, if any.

    A LoRA delta ``B @ A`` must be transformed like the weight, which for a row
    transform means transforming B's rows only.
    """
    if not spec.permute_qk or ttype not in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K):
        return None
    if n_head is None:
        return None
    kv = n_head if ttype == MODEL_TENSOR.ATTN_Q else n_head_kv
    return lambda w: permute_rows(w, n_head, kv)


def needs_head_counts(spec: ArchSpec, ttype: MODEL_TENSOR) -> bool:
    return spec.permute_qk and ttype in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K)
