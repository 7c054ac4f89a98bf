"""Gemma 3n (GGUF ``gemma3n``; google/gemma-3n-E2B, -E4B, text model).

``conversion/gemma.py::Gemma3NModel``: norms as they are (no ``1 + w``), the AltUp and LAuReL
blocks and the per-layer inputs written beside the decoder. llama.cpp (``src/models/gemma3n.cpp``)
multiplies the attention, the MLP, LAuReL's ``linear_left``/``linear_right``, AltUp's prediction and
correction coefficients and the per-layer input gate and projection with ``build_lora_mm``: they
take LoRA. It multiplies the AltUp projections (``altup_projections.N``,
``altup_unembed_projections.N``), AltUp's ``modality_router`` and the model-wide
``per_layer_model_projection`` with a raw ``ggml_mul_mat``, and looks the per-layer token
embeddings up without LoRA: those are refused by name."""

from __future__ import annotations

import re

from gguf import MODEL_ARCH

from .base import Family

_RAW = "llama.cpp multiplies it without LoRA (ggml_mul_mat in src/models/gemma3n.cpp): an adapter on it would load and change nothing"

GEMMA3N = Family(
    MODEL_ARCH.GEMMA3N, ("gemma3n", "gemma3n_text"), name_words=("gemma-3n", "gemma3n"),
    lora_modules=re.compile(
        r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj|per_layer_input_gate"
        r"|per_layer_projection|laurel\.linear_(?:left|right)|altup\.(?:prediction|correction)_coefs)"
        r"|model\.embed_tokens|lm_head)$"),
    no_lora=((r"(^|\.)altup_(?:unembed_)?projections\.\d+$", f"an AltUp projection: {_RAW}"),
             (r"(^|\.)altup\.modality_router$", f"AltUp's router: {_RAW}"),
             (r"(^|\.)per_layer_model_projection$", f"the per-layer model projection: {_RAW}"),
             (r"(^|\.)embed_tokens_per_layer$", "llama.cpp looks the per-layer token embeddings up without LoRA "
                                               "(ggml_get_rows): an adapter on them would load and change nothing")),
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.laurel.linear_left, model.layers.N.mlp.up_proj",
)
