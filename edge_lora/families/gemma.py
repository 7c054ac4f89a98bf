"""Gemma 2 (GGUF ``gemma2``) and Gemma 3 text (``gemma3``).

The base converter stores RMSNorm weights as ``1 + w`` (Gemma computes ``x * (1 + w)``,
llama.cpp multiplies by the stored weight): a base-only transform, no LoRA targets a norm.
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import Family

GEMMA2 = Family(
    MODEL_ARCH.GEMMA2, ("gemma2",), name_words=("gemma-2", "gemma2"), norm_plus_one=True,
    extra_hparams=(("add_attn_logit_softcapping", "attn_logit_softcapping"),
                   ("add_final_logit_softcapping", "final_logit_softcapping"),
                   ("add_sliding_window", "sliding_window")),
)
# without a sliding window llama.cpp builds Gemma3 with full attention everywhere and a single
# rope base; the local layers use their own (transformers 5: rope_parameters per layer type)
GEMMA3 = Family(
    MODEL_ARCH.GEMMA3, ("gemma3", "gemma3_text"), name_words=("gemma-3", "gemma3"), norm_plus_one=True,
    extra_hparams=(("add_sliding_window", "sliding_window"), ("add_rope_freq_base_swa", "rope_parameters.sliding_attention.rope_theta"),
                   ("add_final_logit_softcapping", "final_logit_softcapping")),
)
