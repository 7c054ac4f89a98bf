"""IBM Granite 3.x dense (GGUF ``granite``): llama's converter class, so Q/K rows are permuted.

Granite's multipliers (``attention_multiplier``, ``embedding_multiplier``,
``residual_multiplier``, ``logits_scaling``) are written as hyperparameters and act on
activations, LoRA-inclusive outputs, in transformers and llama.cpp alike
(``src/models/granite.cpp``): a LoRA needs no transform for them. The base converter drops
``head_dim`` (Granite has none).
"""

from __future__ import annotations

from gguf import MODEL_ARCH

from .llama import LlamaFamily

GRANITE = LlamaFamily(
    MODEL_ARCH.GRANITE, ("granite",), name_words=("granite",),
    extra_hparams=(("add_attention_scale", "attention_multiplier"), ("add_embedding_scale", "embedding_multiplier"),
                   ("add_residual_scale", "residual_multiplier"), ("add_logit_scale", "logits_scaling")),
)
