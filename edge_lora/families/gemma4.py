"""Gemma 4 (GGUF ``gemma4``; google/gemma-4 E2B, E4B, 31B dense and 26B-A4B MoE, text model).

``conversion/gemma.py::Gemma4Model`` stores norms as they are (no ``1 + w``, unlike Gemma 3) and
keeps the MoE experts fused: ``experts.gate_up_proj`` is ``ffn_gate_up_exps`` (E, 2 ff, hidden),
``experts.down_proj`` ``ffn_down_exps``, the router ``router.proj`` ``ffn_gate_inp``. transformers
multiplies each expert's whole output by ``router.per_expert_scale[e]``; llama.cpp applies that
scale (``ffn_down_exps.scale``) to the down projection inside ``build_lora_mm_id`` *before* adding
the LoRA, so a down-expert LoRA's B is multiplied by it per expert (gate and up LoRA pass through
the scaled down projection already). The per-layer input gate and projection (``inp_gate``,
``proj``) take LoRA; the model-wide ``per_layer_model_projection`` and the per-layer token
embeddings are used without it (``src/models/gemma4.cpp``): refused by name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import MODEL_ARCH

from .base import Family, FusedExperts

_DOWN_EXPS = re.compile(r"^(blk\.\d+\.ffn_down_exps)\.weight$")


@dataclass(frozen=True)
class Gemma4Family(Family):
    def lora_output_scale(self, gguf_name: str) -> str | None:
        m = _DOWN_EXPS.match(gguf_name)
        return f"{m.group(1)}.scale" if m else None


GEMMA4 = Gemma4Family(
    MODEL_ARCH.GEMMA4, ("gemma4", "gemma4_text"), name_words=("gemma-4", "gemma4"),
    lora_modules=re.compile(
        r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj|per_layer_input_gate"
        r"|per_layer_projection|router\.proj)|model\.embed_tokens|lm_head)$"),
    experts_path="model.layers.{bid}.experts", router_module="router.proj",
    fused_experts=(FusedExperts("gate_up_proj", ("gate_up_proj",)), FusedExperts("down_proj", ("down_proj",))),
    no_lora=((r"(^|\.)per_layer_model_projection$",
              "llama.cpp multiplies Gemma's per-layer model projection without LoRA (ggml_mul_mat in "
              "src/models/gemma4.cpp): an adapter on it would load and change nothing"),
             (r"(^|\.)embed_tokens_per_layer$",
              "llama.cpp looks up Gemma's per-layer token embeddings without LoRA (ggml_get_rows in "
              "src/models/gemma4.cpp): an adapter on them would load and change nothing")),
    tree_example="model.layers.N.self_attn.q_proj, model.layers.N.mlp.up_proj, model.layers.N.experts (gate_up_proj)",
)
