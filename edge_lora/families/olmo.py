"""OLMo 2 (GGUF ``olmo2``): the decoder tree, no transforms (OLMo 1 permuted Q/K; OLMo 2 does
not: ``conversion/olmo.py::Olmo2Model``). Its norms sit after attention and the MLP
(``post_attention_norm``, ``post_ffw_norm``) and its Q/K norms span all heads: base-only."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import Family

OLMO2 = Family(MODEL_ARCH.OLMO2, ("olmo2",), name_words=("olmo-2", "olmo2"))
