"""The families edge-lora supports, by GGUF architecture and by Hugging Face ``model_type``.

Each is proven by parity tests (transformers + PEFT against llama.cpp on a tiny model). A new
family: one module in this package, one line in :data:`FAMILIES`, one parity case.
"""

from __future__ import annotations

from .base import Family
from .exaone import EXAONE4
from .gemma import GEMMA2, GEMMA3
from .gemma3n import GEMMA3N
from .gemma4 import GEMMA4
from .glm import GLM4
from .gpt_oss import GPT_OSS
from .granite import GRANITE, GRANITEHYBRID, GRANITEMOE
from .lfm2 import LFM2, LFM2MOE
from .llama import LLAMA, MISTRAL3, SMOLLM3
from .olmo import OLMO2, OLMOE
from .phi3 import PHI3
from .qwen import QWEN2, QWEN2MOE, QWEN3, QWEN3MOE
from .qwen35 import QWEN35, QWEN35MOE

FAMILIES: dict[str, Family] = {
    # MoE before dense, Qwen3.5 before Qwen3: the first family whose name words a model name holds wins
    f.name: f for f in (MISTRAL3, LLAMA, QWEN2MOE, QWEN2, QWEN35MOE, QWEN3MOE, QWEN35, QWEN3, GEMMA2, GEMMA3N, GEMMA3, GEMMA4, PHI3, SMOLLM3, GRANITEHYBRID, GRANITEMOE, GRANITE, OLMOE, OLMO2,
                        GLM4, EXAONE4, LFM2MOE, LFM2, GPT_OSS)
}

#: model-name words of families edge-lora does not convert, for the wrong-base note
OTHER_NAME_WORDS = {"gpt2": "gpt2", "gpt-j": "gptj", "falcon": "falcon"}


#: archs refused with a reason (not merely unsupported yet): llama.cpp multiplies their LoRA
#: targets with a raw ggml_mul_mat, so an adapter would load and be ignored (src/models/deepseek2.cpp)
REFUSED = {
    "deepseek2": "DeepSeek-V2/V3-style multi-head latent attention: llama.cpp multiplies the attention projections "
                 "(wq_a, wq_b, wkv_a_mqa, wkv_b) and the output without LoRA, so an adapter would load and change nothing",
}


def unsupported_reason(name: str) -> str:
    """Why a GGUF arch or model type has no family: the reason it is refused, or the supported list."""
    if name in REFUSED:
        return f"architecture {name!r} is refused: {REFUSED[name]}"
    return f"architecture {name!r} is not supported; supported: {', '.join(supported_names())}"


def family_for(name: str) -> Family | None:
    """The family of a GGUF architecture name or a Hugging Face ``model_type``, if supported."""
    if name in FAMILIES:
        return FAMILIES[name]
    return next((f for f in FAMILIES.values() if name in f.hf_model_types), None)


def adapter_archs(base_arch: str) -> tuple[str, ...]:
    """The GGUF archs whose adapters run on a ``base_arch`` base: its own, and those its family accepts."""
    family = FAMILIES.get(base_arch)
    return (base_arch, *(family.adapter_archs if family else ()))


def supported_names() -> list[str]:
    return sorted(FAMILIES)


def family_named_in(text: str) -> str | None:
    """The family (a GGUF arch name) whose model-name words appear in ``text`` (a base model's
    name or path, lower case), the first in table order; None when none does. Only the model's
    own name counts, not its organisation or folders (``mistralai/mixtral-8x7b`` is Mixtral)."""
    text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for f in FAMILIES.values():
        if any(w in text for w in f.name_words):
            return f.name
    return next((fam for w, fam in OTHER_NAME_WORDS.items() if w in text), None)
