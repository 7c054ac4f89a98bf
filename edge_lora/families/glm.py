"""GLM-4 (GGUF ``glm4``): GLM-4-0414 and GLM-Z1 text models. ``mlp.gate_up_proj`` maps straight
to the fused ``ffn_up`` (llama.cpp splits gate and up at run time), so a LoRA on it needs no
transform; half of each head is rotated (``partial_rotary_factor``, a base hyperparameter).
The Q/K reorder of ``conversion/glm.py`` applies to GLM-4V's M-RoPE checkpoints only."""

from __future__ import annotations

from gguf import MODEL_ARCH

from .base import Family

GLM4 = Family(
    MODEL_ARCH.GLM4, ("glm4",), name_words=("glm-4", "glm4", "glm-z1"),
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.mlp.gate_up_proj",
)
