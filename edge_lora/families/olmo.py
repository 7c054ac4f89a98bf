"""OLMo 2 (GGUF ``olmo2``) and OLMoE (``olmoe``): the decoder tree, no transforms (OLMo 1 permuted Q/K; OLMo 2 does
not: ``conversion/olmo.py::Olmo2Model``). Its norms sit after attention and the MLP
(``post_attention_norm``, ``post_ffw_norm``) and its Q/K norms span all heads: base-only."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gguf import MODEL_ARCH

from .base import GATED_EXPERTS, Family

OLMO2 = Family(MODEL_ARCH.OLMO2, ("olmo2",), name_words=("olmo-2", "olmo2"))


@dataclass(frozen=True)
class OlmoeFamily(Family):
    def write_hparams(self, writer: Any, config: Any) -> None:
        super().write_hparams(writer, config)
        writer.add_layer_norm_rms_eps(1e-5)  # conversion/olmo.py::OlmoeModel writes 1e-5 whatever the config says


#: OLMoE (GGUF ``olmoe``): experts ``mlp.experts.E.{gate,up,down}_proj`` stacked, router ``mlp.gate``
OLMOE = OlmoeFamily(
    MODEL_ARCH.OLMOE, ("olmoe",), name_words=("olmoe",),
    expert_modules=re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)$"),
    extra_hparams=(("add_expert_count", "num_experts"), ("add_expert_used_count", "num_experts_per_tok")),
    fused_experts=GATED_EXPERTS,
)
