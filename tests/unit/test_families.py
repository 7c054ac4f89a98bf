"""The family registry and each family's name mapping, both ways (gguf-py's table, no engine)."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import MODEL_TENSOR, MODEL_TENSORS

from edge_lora.families import FAMILIES, family_for, supported_names
from edge_lora.families.registry import family_named_in

N_LAYERS = 3


def test_registry_by_arch_and_hf_model_type():
    assert supported_names() == ["exaone4", "gemma2", "gemma3", "gemma3n", "gemma4", "glm4", "gpt-oss", "granite", "granitehybrid", "granitemoe", "lfm2", "lfm2moe", "llama", "mistral3",
                                 "olmo2", "olmoe", "phi3", "qwen2", "qwen2moe", "qwen3", "qwen35", "qwen35moe", "qwen3moe",
                                 "smollm3"]
    assert family_for("qwen3_5_moe_text") is FAMILIES["qwen35moe"] and family_for("gpt_oss") is FAMILIES["gpt-oss"]
    assert family_named_in("qwen/qwen3.5-35b-a3b") == "qwen35moe" and family_named_in("qwen/qwen3.5-9b") == "qwen35"
    assert family_for("mistral") is FAMILIES["llama"] and family_for("gemma3_text") is FAMILIES["gemma3"]
    assert family_for("gpt2") is None


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_names_map_both_ways(name):
    """Every LoRA module of the family maps to a tensor of its arch and back to itself."""
    fam = FAMILIES[name]
    back = fam.hf_module_names(N_LAYERS)
    assert back, "the reverse table is empty"
    for gguf_name, (ttype, module) in back.items():
        assert fam.tensor_for(module, N_LAYERS) == (ttype, gguf_name)
    modules = {m for _, m in back.values()}
    assert back[f"blk.{N_LAYERS - 1}.attn_output.weight"][1].startswith(f"model.layers.{N_LAYERS - 1}.self_attn.")
    assert "model.embed_tokens" in modules
    assert ("lm_head" in modules) == (MODEL_TENSOR.OUTPUT in MODEL_TENSORS[fam.arch])  # gemma2: always tied
    qkv = "model.layers.0.linear_attn.in_proj_qkv" if name.startswith("qwen35") else "model.layers.0.self_attn.qkv_proj"
    assert (qkv in modules) == (MODEL_TENSOR.ATTN_QKV in MODEL_TENSORS[fam.arch])
    assert ("model.layers.0.mlp.gate_up_proj" in modules) == (name in ("phi3", "glm4"))  # fused ffn_up
    # a path of another family's tree is not this family's, whatever gguf's union table says
    assert fam.tensor_for("transformer.h.0.attn.q_proj", N_LAYERS) is None


def test_only_llama_permutes_q_and_k_and_the_inverse_undoes_it():
    for name, fam in FAMILIES.items():
        permuted = name in ("llama", "smollm3", "granite", "granitehybrid", "granitemoe", "mistral3")  # llama's converter class
        assert (fam.row_transform(MODEL_TENSOR.ATTN_Q, 4, 2) is not None) == permuted
        assert fam.row_transform(MODEL_TENSOR.ATTN_V, 4, 2) is None
    llama = FAMILIES["llama"]
    b = np.random.default_rng(0).standard_normal((4 * 8, 3))
    for ttype, rows in ((MODEL_TENSOR.ATTN_Q, 32), (MODEL_TENSOR.ATTN_K, 16)):
        fwd = llama.row_transform(ttype, 4, 2)
        x = b[:rows]
        assert not np.array_equal(fwd(x), x)
        np.testing.assert_array_equal(fwd(x)[llama.inverse_row_transform(ttype, 4, 2, rows)], x)
    assert llama.needs_head_counts(MODEL_TENSOR.ATTN_K) and not llama.needs_head_counts(MODEL_TENSOR.FFN_UP)


def test_expert_modules_both_ways():
    moe = FAMILIES["qwen3moe"]
    assert moe.expert_of("model.layers.1.mlp.experts.3.up_proj") == ("model.layers.1.mlp.experts.up_proj", 3)
    assert moe.expert_module("model.layers.1.mlp.experts.up_proj", 3) == "model.layers.1.mlp.experts.3.up_proj"
    assert moe.expert_of("model.layers.1.mlp.gate") is None and moe.expert_module("model.layers.1.mlp.gate", 0) is None
    assert FAMILIES["qwen3"].expert_of("model.layers.1.mlp.experts.3.up_proj") is None
    back = moe.hf_module_names(N_LAYERS)
    assert back["blk.0.ffn_up_exps.weight"] == (MODEL_TENSOR.FFN_UP_EXP, "model.layers.0.mlp.experts.up_proj")
    assert back["blk.0.ffn_gate_inp.weight"] == (MODEL_TENSOR.FFN_GATE_INP, "model.layers.0.mlp.gate")


def test_family_named_in_a_model_name():
    assert family_named_in("meta-llama/llama-3.2-1b") == "llama"
    assert family_named_in("mistralai/mistral-7b") == "llama"
    assert family_named_in("google/gemma-3-270m") == "gemma3"
    assert family_named_in("mistralai/mixtral-8x7b") == "llama"  # Mixtral is GGUF llama with experts
    assert family_named_in("/models/qwen2.5-7b-instruct/") == "qwen2"
    assert family_named_in("qwen/qwen3-30b-a3b-instruct-2507") == "qwen3moe"
    assert family_named_in("my-own-model") is None


def test_refused_archs_say_why():
    from edge_lora.families.registry import unsupported_reason

    assert "without LoRA" in unsupported_reason("deepseek2") and family_for("deepseek2") is None
    assert unsupported_reason("gpt2").startswith("architecture 'gpt2' is not supported; supported: exaone4")


def test_projections_llama_cpp_multiplies_without_lora_are_refused_by_name():
    gemma4 = FAMILIES["gemma4"]
    assert "without LoRA" in gemma4.no_lora_reason("model.per_layer_model_projection")
    assert "without LoRA" in gemma4.no_lora_reason("model.language_model.per_layer_model_projection")
    assert gemma4.no_lora_reason("model.layers.0.per_layer_projection") is None
    assert all(f.no_lora_reason("model.layers.0.self_attn.q_proj") is None for f in FAMILIES.values())
