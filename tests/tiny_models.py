"""Offline test fixtures: tiny random transformers models and their f32 GGUF bases.

Each case builds a few-layer random model with transformers and writes the GGUF base
llama.cpp would get from ``convert_hf_to_gguf.py`` (same metadata, tensor names and
base-weight transforms), so parity tests can compare llama.cpp's logits with
transformers' logits without downloading anything.

Tensor names, the Q/K row permutation, each family's extra hyperparameters and its
base-only transforms (Gemma's RMSNorm "+1") come from the project's family objects
(``edge_lora.families``), so a wrong entry fails the base parity test before it can
hide inside an adapter test. Generated ``rope_freqs`` (Llama 3) live here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers
from gguf import GGUFWriter, MODEL_TENSOR

from edge_lora.engine.tiny import write_vocab
from edge_lora.families import Family, family_for

CASES = ["llama2", "llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite", "olmo2",
         "glm4", "exaone4", "qwen3moe", "mixtral", "olmoe", "qwen2moe", "mistral3", "lfm2", "gptoss", "qwen35", "qwen35moe", "gemma4", "gemma4moe", "lfm2moe", "granitehybrid", "granitemoe", "gemma3n", "granite4"]

#: cases whose GGUF base is written under another arch than the model type's family (llama.cpp
#: writes Mistral Small 3.x, text model_type mistral, as mistral3)
BASE_ARCH = {"mistral3": "mistral3"}

#: 3 specials + 256 byte tokens (llama.cpp's SPM vocab looks up "<0x0A>") + a few plain ones
VOCAB_SIZE = 320
N_SPECIAL = 3
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

#: ids chosen clear of the special tokens; repeats make position effects visible
TOKENS: list[int] = [37, 251, 119, 8, 300, 77, 77, 164, 12, 290, 55, 203, 141, 99, 318, 37]

#: llama.cpp context for the parity runs: room for TOKENS plus slack
N_CTX = 64

# sizes shared by every case; per-case overrides below
_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=None,
)


@dataclass(frozen=True)
class CaseDef:
    """How to build one case's transformers model."""

    config_cls: str
    model_cls: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: the GGUF base is written by llama.cpp's own converter (tests/llama_cpp_base.py), not from the
    #: family table: families whose base converter does more than the table knows (Qwen3.5's linear
    #: attention: A_log, conv1d, norms, the V-head reorder of base-only weights)
    llama_cpp_base: bool = False


_CASE_DEFS: dict[str, CaseDef] = {
    # MHA with its own lm_head: adapter tests need a base with an output tensor
    "llama2": CaseDef("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, head_dim=16)),
    "llama3": CaseDef(
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_key_value_heads=2,
            head_dim=16,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            # a short original context puts the 8 rope frequencies of head_dim 16 in
            # all three llama3 regimes (unscaled, smoothed, scaled by factor)
            rope_scaling=dict(
                rope_type="llama3",
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "mistral": CaseDef("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, head_dim=16, sliding_window=None)),
    "qwen2": CaseDef("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    # head_dim * n_head != hidden_size, as in real Qwen3: exercises key/value length
    "qwen3": CaseDef("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=32)),
    "gemma2": CaseDef(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            num_key_value_heads=2,
            head_dim=32,
            # llama.cpp scales queries by 1/sqrt(head_dim) for all but the 27B model
            query_pre_attn_scalar=32,
            sliding_window=512,
            # smaller than Gemma's 50/30 so the tanh caps actually bend these logits
            attn_logit_softcapping=10.0,
            final_logit_softcapping=5.0,
            tie_word_embeddings=True,
        ),
    ),
    "gemma3": CaseDef(
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            # 6 layers: layers 0-4 slide, layer 5 is global (llama.cpp's pattern of 6)
            num_hidden_layers=6,
            num_key_value_heads=1,
            head_dim=32,
            query_pre_attn_scalar=32,
            sliding_window=512,
            # Gemma 3's 10000 equals llama.cpp's default local base, which would let a
            # missing rope_freq_base_swa key pass unnoticed
            rope_local_base_freq=20000.0,
            tie_word_embeddings=True,
        ),
    ),
    # 4 layers: the 4th has no rope (SmolLM3's NoPE layers), tied as released
    "smollm3": CaseDef("SmolLM3Config", "SmolLM3ForCausalLM", dict(num_hidden_layers=4, num_key_value_heads=2,
                                                                rope_theta=2000000.0, tie_word_embeddings=True)),
    # multipliers away from 1 so a missing or misplaced one shows
    "granite": CaseDef("GraniteConfig", "GraniteForCausalLM", dict(
        num_key_value_heads=2, attention_multiplier=0.2, embedding_multiplier=3.0, residual_multiplier=0.5,
        logits_scaling=2.0)),
    "olmo2": CaseDef("Olmo2Config", "Olmo2ForCausalLM", dict(num_key_value_heads=2)),
    # GLM-4: fused gate_up_proj, half-rotary heads, q/k/v biases
    "glm4": CaseDef("Glm4Config", "Glm4ForCausalLM", dict(num_key_value_heads=2, head_dim=16)),
    # global attention on every layer, as EXAONE 4.0 1.2B: llama.cpp applies the sliding pattern (and
    # no rope on the global layers) only to the 64-layer 32B model (src/models/exaone4.cpp)
    "exaone4": CaseDef("Exaone4Config", "Exaone4ForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, sliding_window=None, layer_types=["full_attention"] * 2)),
    # 4 experts, top 2, ff 48 (hidden 64 != ff != 2 ff: the orientation of every factor is decidable);
    # llama.cpp normalises the top-k weights for qwen3moe, as norm_topk_prob does
    "qwen3moe": CaseDef("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
        norm_topk_prob=True)),
    # Mixtral: GGUF llama (Q/K permuted) with 4 experts of ff 48, top 2
    "mixtral": CaseDef("MixtralConfig", "MixtralForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=48,
        sliding_window=None)),
    # OLMoE: MHA as released (llama.cpp sizes its K norm by n_embd); the converter writes rms eps 1e-5
    # whatever the config says: the config says so too
    "olmoe": CaseDef("OlmoeConfig", "OlmoeForCausalLM", dict(
        num_key_value_heads=4, num_experts=4, num_experts_per_tok=2, intermediate_size=48, rms_norm_eps=1e-5)),
    # Qwen2-MoE: 4 experts of ff 48, top 2, and a shared expert of ff 80 behind its sigmoid gate
    "qwen2moe": CaseDef("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48,
        shared_expert_intermediate_size=80)),
    # the text model of Mistral Small 3.x / Ministral 3, written as a mistral3 base
    "mistral3": CaseDef("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, head_dim=16,
                                                                   sliding_window=None)),
    # LFM2: a short-convolution layer, then an attention layer; tied as released
    "lfm2": CaseDef("Lfm2Config", "Lfm2ForCausalLM", dict(
        num_key_value_heads=2, layer_types=["conv", "full_attention"], block_auto_adjust_ff_dim=False,
        norm_eps=1e-6, conv_L_cache=3, tie_word_embeddings=True)),
    # gpt-oss: 4 experts of ff 48 (fused, transposed, gate and up interleaved), top 2, attention sinks,
    # sliding and full layers alternating; the default rope (the released models use yarn)
    "gptoss": CaseDef("GptOssConfig", "GptOssForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, intermediate_size=48,
        sliding_window=512, rope_parameters={"rope_type": "default", "rope_theta": 150000.0})),
    # Qwen3.5: 3 linear-attention layers then a full-attention one; 4 value heads on 2 key heads, so
    # llama.cpp reorders the V heads (dk = dv = 32: its gated-delta-net kernels' smallest tested width)
    "qwen35": CaseDef("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        layer_types=["linear_attention"] * 3 + ["full_attention"]), llama_cpp_base=True),
    # Qwen3.5-MoE: Qwen3.5's layers with 4 experts of ff 48 (top 2) and a shared expert of ff 80
    "qwen35moe": CaseDef("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", dict(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=48, shared_expert_intermediate_size=80,
        layer_types=["linear_attention"] * 3 + ["full_attention"]), llama_cpp_base=True),
    # Gemma 4 (text): 3 sliding layers then a global one of a wider head (global_head_dim), per-layer
    # inputs (their vocabulary the model's own), tied as released
    "gemma4": CaseDef("Gemma4TextConfig", "Gemma4ForCausalLM", dict(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=16, global_head_dim=32, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB_SIZE, sliding_window=16, pad_token_id=0), llama_cpp_base=True),
    # Gemma 4 26B-A4B's layout: the MoE block (4 experts of ff 48, top 2, per-expert output scales) beside the MLP
    "gemma4moe": CaseDef("Gemma4TextConfig", "Gemma4ForCausalLM", dict(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=16, global_head_dim=32, hidden_size_per_layer_input=8,
        vocab_size_per_layer_input=VOCAB_SIZE, sliding_window=16, pad_token_id=0, enable_moe_block=True, num_experts=4,
        top_k_experts=2, moe_intermediate_size=48), llama_cpp_base=True),
    # LFM2-MoE (transformers 5 only): a dense conv layer, then attention and conv layers with 4 experts
    # of ff 48 (top 2); tied as released
    "lfm2moe": CaseDef("Lfm2MoeConfig", "Lfm2MoeForCausalLM", dict(
        num_hidden_layers=3, num_key_value_heads=2, layer_types=["conv", "full_attention", "conv"], num_dense_layers=1,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, norm_eps=1e-6, conv_L_cache=3,
        tie_word_embeddings=True), llama_cpp_base=True),
    # Granite 4 hybrid: a Mamba-2 layer (8 heads of 16), then an attention layer; 4 experts of ff 48 (top 2)
    # beside a shared MLP of ff 80; multipliers away from 1
    "granitehybrid": CaseDef("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", dict(
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, intermediate_size=48,
        shared_intermediate_size=80, layer_types=["mamba", "attention"], mamba_n_heads=8, mamba_d_head=16,
        mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, attention_multiplier=0.2, embedding_multiplier=3.0,
        residual_multiplier=0.5, logits_scaling=2.0), llama_cpp_base=True),
    # dense Granite 4 (granite-4.0-micro): GraniteMoeHybrid with attention layers only and rope, which
    # llama.cpp writes as a granite base (shared_mlp.input_linear split into ffn_gate and ffn_up)
    "granite4": CaseDef("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", dict(
        num_key_value_heads=2, num_local_experts=0, num_experts_per_tok=0, intermediate_size=80,
        shared_intermediate_size=80, layer_types=["attention", "attention"], position_embedding_type="rope",
        attention_multiplier=0.2, embedding_multiplier=3.0, residual_multiplier=0.5, logits_scaling=2.0),
        llama_cpp_base=True),
    # Granite 3 MoE: 4 experts of ff 48 (top 2), multipliers away from 1
    "granitemoe": CaseDef("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, intermediate_size=48,
        attention_multiplier=0.2, embedding_multiplier=3.0, residual_multiplier=0.5, logits_scaling=2.0),
        llama_cpp_base=True),
    # Gemma 3n (text): 4 sliding layers then a global one (llama.cpp's fixed pattern of 5), AltUp of 4,
    # LAuReL and per-layer inputs at llama.cpp's fixed widths (64, 256), activation sparsity 0.95 as
    # llama.cpp applies it to the first 10 layers; tied as released. ff 4096: llama.cpp's sparsity
    # cut-off takes the sample standard deviation (1 / (n - 1)), transformers the population one,
    # a 0.4% difference at ff 128 (5e-3 in the logits) and none that matters at real widths
    "gemma3n": CaseDef("Gemma3nTextConfig", "Gemma3nForCausalLM", dict(
        num_hidden_layers=5, num_key_value_heads=2, head_dim=16, hidden_size_per_layer_input=256,
        vocab_size_per_layer_input=VOCAB_SIZE, sliding_window=16, laurel_rank=64, altup_num_inputs=4,
        num_kv_shared_layers=0, activation_sparsity_pattern=[0.95] * 5, intermediate_size=[4096] * 5,
        layer_types=["sliding_attention"] * 4 + ["full_attention"], pad_token_id=0), llama_cpp_base=True),
    "phi3": CaseDef(
        "Phi3Config",
        "Phi3ForCausalLM",
        dict(num_key_value_heads=4, sliding_window=None, rope_scaling=None, original_max_position_embeddings=256),
    ),
}


def is_tied(case: str) -> bool:
    """Whether the case's lm_head is tied to its token embedding (llama.cpp then has no output tensor)."""
    spec = _CASE_DEFS[case]
    config = getattr(transformers, spec.config_cls)(**{**_COMMON, **spec.overrides})
    return bool(config.tie_word_embeddings)


def uses_llama_cpp_base(case: str) -> bool:
    """Whether the case's base is written by llama.cpp's own converter (:attr:`CaseDef.llama_cpp_base`)."""
    return _CASE_DEFS[case].llama_cpp_base


def is_moe(case: str) -> bool:
    """Whether the case's MLP is a mixture of experts (transformers 5: fused 3-D expert parameters)."""
    overrides = _CASE_DEFS[case].overrides
    return bool(overrides.get("num_experts") or overrides.get("num_local_experts"))


def make_tiny_model(case: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A tiny float32 eval-mode model with random (non-default) weights."""
    spec = _CASE_DEFS[case]
    config_cls = getattr(transformers, spec.config_cls)
    model_cls = getattr(transformers, spec.model_cls)
    # eager: sdpa would silently drop Gemma 2's attention softcap
    config = config_cls(**{**_COMMON, **spec.overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    _randomize(model, seed)
    return model.eval()


def _randomize(model: transformers.PreTrainedModel, seed: int) -> None:
    """Replace default init so every tensor matters to the logits.

    Default init leaves norms at 1 (or 0 for Gemma) and biases at 0, which would hide
    a dropped norm, a missing Gemma "+1" or a bias mapped to the wrong tensor, and
    its std of 0.02 gives nearly flat logits.
    """
    gen = torch.Generator().manual_seed(seed)
    # Gemma's RMSNorm multiplies by (1 + weight): its neutral weight is 0, not 1
    norm_center = 0.0 if model.config.model_type.startswith("gemma") else 1.0
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                param.copy_(norm_center + 0.2 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            else:
                # unit-variance outputs for unit-variance inputs (fan-in is the last axis)
                param.copy_(noise / math.sqrt(param.shape[-1]))


def hf_logits(model: transformers.PreTrainedModel, token_ids: Sequence[int]) -> np.ndarray:
    """transformers' logits, ``[n_tokens, n_vocab]`` float32."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(token_ids)], dtype=torch.long))
    return out.logits[0].to(torch.float32).numpy()


def llama_logits(
    base_path: str | Path,
    token_ids: Sequence[int],
    lora_path: str | Path | None = None,
    lora_scale: float = 1.0,
) -> np.ndarray:
    """llama.cpp's logits for ``token_ids`` (no BOS added), ``[n_tokens, n_vocab]`` float32."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(base_path),
        lora_path=None if lora_path is None else str(lora_path),
        lora_scale=lora_scale,
        logits_all=True,
        n_ctx=max(N_CTX, len(token_ids)),
        n_threads=2,
        # an f16 KV cache alone costs ~1e-4 relative error; keep the comparison exact-ish
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    try:
        llm.eval(list(token_ids))
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
    finally:
        llm.close()


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b||_F / ||b||_F``, computed in float64."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


@dataclass(frozen=True)
class TinyCase:
    """One architecture case: its transformers model and the f32 GGUF base written from it."""

    case: str
    model: transformers.PreTrainedModel
    base_path: Path

    def fresh_model(self) -> transformers.PreTrainedModel:
        """A private copy of ``model``.

        PEFT's ``get_peft_model`` injects LoRA layers into the model it is given, so a
        test that wrapped the shared ``model`` would change it for every later test.
        """
        return copy.deepcopy(self.model)


# --- GGUF base writing --------------------------------------------------------------


def rope_parameters(config: transformers.PretrainedConfig) -> dict[str, Any]:
    """The rope of the (full-attention) layers: transformers 5's ``rope_parameters`` (per layer type
    for Gemma 3: ``full_attention``), with ``rope_theta`` and any scaling (``rope_type``, ``factor``...)."""
    rope = dict(config.rope_parameters or {})
    return dict(rope.get("full_attention", rope))


def head_dim_of(config: transformers.PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _n_head_kv(config: transformers.PretrainedConfig) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _spec_for(config: transformers.PretrainedConfig) -> Family:
    spec = family_for(config.model_type)
    if spec is None:
        raise ValueError(f"no GGUF arch for model_type {config.model_type!r}")
    return spec


def write_gguf_base(model: transformers.PreTrainedModel, path: str | Path, *, fuse_qkv: bool = False,
                    arch: str | None = None) -> None:
    """Write ``model`` as an all-f32 GGUF base that llama.cpp loads; ``fuse_qkv`` as llama.cpp's
    converter does with ``--fuse-qkv`` (q, k, v concatenated by rows into ``attn_qkv``); ``arch``
    another GGUF arch than the model type's family."""
    config = model.config
    spec = _spec_for(config) if arch is None else family_for(arch)
    writer = GGUFWriter(str(path), spec.name)
    _write_hparams(writer, config, spec)
    write_vocab(writer, config.vocab_size)  # the engine's own synthetic SPM vocabulary
    tensors = dict(_base_tensors(model, spec))
    if fuse_qkv:
        tensors = _fused_qkv(tensors, config.num_hidden_layers)
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_hparams(writer: GGUFWriter, config: transformers.PretrainedConfig, spec: Family) -> None:
    """Hyperparameters every supported arch reads (TextModel.set_gguf_parameters), then per-arch extras."""
    head_dim = head_dim_of(config)
    # the name must not contain "phi3": llama.cpp then edits attributes of Phi-3's
    # special tokens by text and fails on a vocab without "<|endoftext|>"
    writer.add_name("edge-lora tiny test model")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    rope = rope_parameters(config)
    rotary = rope.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0
    common = {
        "add_vocab_size": config.vocab_size, "add_context_length": config.max_position_embeddings,
        "add_embedding_length": config.hidden_size, "add_block_count": config.num_hidden_layers,
        "add_feed_forward_length": config.intermediate_size, "add_head_count": config.num_attention_heads,
        "add_head_count_kv": _n_head_kv(config), "add_key_length": head_dim, "add_value_length": head_dim,
        "add_layer_norm_rms_eps": getattr(config, "rms_norm_eps", None), "add_rope_freq_base": rope["rope_theta"],
        "add_rope_dimension_count": int(head_dim * rotary),
    }
    for method, value in {**common, **spec.hparam_overrides(config)}.items():
        getattr(writer, method)(value)
    spec.write_hparams(writer, config)


def _base_tensors(model: transformers.PreTrainedModel, spec: Family) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, f32 array) for every parameter, transformed as the base converter does."""
    config = model.config
    n_layers = config.num_hidden_layers
    experts: dict[str, dict[int, np.ndarray]] = {}  # stacked module -> expert -> weight
    # named_parameters() drops the tied lm_head alias, so a tied model gets no output tensor
    for hf_name, param in model.named_parameters():
        module, _, kind = hf_name.rpartition(".")
        fused = spec.fused_expert(module, kind)
        if fused is not None:  # transformers 5: every expert in one 3-D parameter, split into its parts
            for part, data in zip(fused.parts, fused.split_weight(param.detach().to(torch.float32).numpy())):
                found = spec.tensor_for(f"{module}.{part}", n_layers)
                if found is None:
                    raise KeyError(f"{spec.name}: no GGUF tensor for {hf_name}'s {part}")
                name = found[1].removesuffix(".weight") + ".bias" if fused.bias else found[1]
                yield name, np.ascontiguousarray(data, dtype=np.float32)
            continue
        expert = spec.expert_of(module)
        if expert is not None:  # stacked below, as the base converter does
            experts.setdefault(expert[0], {})[expert[1]] = param.detach().to(torch.float32).numpy()
            continue
        found = spec.tensor_for(module, n_layers)
        if found is None and spec.tensor_for(hf_name, n_layers) is not None:  # a raw parameter (gpt-oss's sinks)
            module, kind, found = hf_name, "weight", spec.tensor_for(hf_name, n_layers)
        if found is None:
            raise KeyError(f"{spec.name}: no GGUF tensor for {hf_name}")
        ttype, gguf_name = found
        if kind != "weight":
            gguf_name = gguf_name.removesuffix(".weight") + f".{kind}"
        data = param.detach().to(torch.float32).numpy().copy()
        permute = spec.row_transform(ttype, config.num_attention_heads, _n_head_kv(config))
        if permute is not None:
            data = permute(data)
        if spec.norm_plus_one and hf_name.endswith("norm.weight"):
            data = data + 1.0
        data = spec.base_tensor(hf_name, data)
        yield gguf_name, np.ascontiguousarray(data, dtype=np.float32)
    for stacked, by_expert in experts.items():
        found = spec.tensor_for(stacked, n_layers)
        if found is None:
            raise KeyError(f"{spec.name}: no GGUF tensor for the experts of {stacked}")
        yield found[1], np.ascontiguousarray(np.stack([by_expert[e] for e in sorted(by_expert)]), dtype=np.float32)
    yield from _extra_tensors(config)


def _fused_qkv(tensors: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """``conversion/base.py``'s Q/K/V fusion: ``torch.cat([q, k, v], dim=0)`` per block, weights and biases."""
    out = dict(tensors)
    for i in range(n_layers):
        for kind in ("weight", "bias"):
            names = [f"blk.{i}.attn_{p}.{kind}" for p in "qkv"]
            if all(n in out for n in names):
                out[f"blk.{i}.attn_qkv.{kind}"] = np.concatenate([out.pop(n) for n in names], axis=0)
    return out


def _extra_tensors(config: transformers.PretrainedConfig) -> Iterator[tuple[str, np.ndarray]]:
    rope = rope_parameters(config)
    if rope.get("rope_type") == "llama3":
        name = gguf.TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
        yield name, llama3_rope_factors(head_dim_of(config), rope["rope_theta"], rope)


def llama3_rope_factors(head_dim: int, theta: float, rope: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors llama.cpp applies (LlamaModel.generate_extra_tensors)."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def quantize_base(src: Path, dst: Path, ftype: int | None = None) -> Path:
    """Quantize a GGUF base with llama.cpp's own quantizer (Q8_0 by default: hidden 64 fits its blocks)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0 if ftype is None else ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src}")
    return dst
