"""Bases converted with llama.cpp's ``--fuse-qkv`` (q, k and v concatenated into ``attn_qkv``) and
``--fuse-gate-up-exps`` (each expert's gate and up rows in ``ffn_gate_up_exps``; written by llama.cpp's
own converter): separate LoRA converts exactly onto the fused tensor (A stacked, B block-diagonal,
or one shared A), decided from the base's tensor list. Against transformers + PEFT (relative error
<= 1e-3, the adapter moving the logits by > 0.05)."""

from __future__ import annotations

import pytest
from adapters import make_peft_adapter, peft_logits, per_expert_save
from llama_cpp_base import require_vendored_llama_cpp, write_llama_cpp_base
from tiny_models import TOKENS, hf_logits, llama_logits, rel_err, write_gguf_base

from edge_lora.errors import ConversionError
from edge_lora.formats.gguf_file import read_gguf
from edge_lora_convert import convert, lora_source

RTOL = 1e-3
#: llama (Q/K permuted before fusing), qwen3 (head_dim != hidden / heads, GQA), gemma3 (GQA 4:1)
CASES = ["llama2", "qwen3", "gemma3"]


@pytest.fixture(scope="module")
def fused(tiny, tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            t = tiny(case)
            path = tmp_path_factory.mktemp(f"fused-{case}") / "base-fused.gguf"
            write_gguf_base(t.model, path, fuse_qkv=True)
            cache[case] = (t, path)
        return cache[case]

    return get


@pytest.mark.parametrize("case", CASES)
def test_fused_base_matches_transformers(fused, case):
    t, base = fused(case)
    names = read_gguf(base).tensors
    assert "blk.0.attn_qkv.weight" in names and "blk.0.attn_q.weight" not in names
    err = rel_err(llama_logits(base, TOKENS), hf_logits(t.model, TOKENS))
    print(f"parity fused {case}/base: {err:.2e}")
    assert err <= RTOL


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("targets", [["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], ["q_proj", "v_proj"]],
                         ids=["qkv", "q+v"])
def test_separate_qkv_lora_packs_onto_the_fused_tensor(fused, case, targets, tmp_path):
    t, base = fused(case)
    cfg = dict(r=8, lora_alpha=16, target_modules=targets, rank_pattern={"v_proj": 4}, alpha_pattern={"q_proj": 32})
    ref = make_peft_adapter(t.model, tmp_path / "a", cfg, seed=7)
    res = convert(tmp_path / "a", base=base, out=tmp_path / "a.gguf", outtype="f32")
    shapes = dict(res.tensors)
    assert "blk.0.attn_qkv.weight.lora_a" in shapes and "blk.0.attn_q.weight.lora_a" not in shapes
    assert any("packed onto them" in n for n in res.notes)
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > 0.05
    err = rel_err(llama_logits(base, TOKENS, lora_path=tmp_path / "a.gguf"), want)
    print(f"parity fused {case}/{'+'.join(targets)}: {err:.2e}")
    assert err <= RTOL


def test_dora_on_a_fused_base_is_refused(fused, tmp_path):
    t, base = fused("qwen3")
    make_peft_adapter(t.model, tmp_path / "d", dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ConversionError, match="DoRA .* of a fused base"):
        lora_source(tmp_path / "d", base)


@pytest.mark.parametrize("layout", ["target_parameters", "per-expert"])
def test_expert_lora_packs_onto_fused_gate_up_experts(tiny, layout, tmp_path):
    """Qwen3.5-MoE converted with --fuse-gate-up-exps: gate and up expert LoRA (one fused
    target_parameters LoRA, or transformers 4's per-expert gate_proj and up_proj) onto ffn_gate_up_exps."""
    vendor = require_vendored_llama_cpp()
    t = tiny("qwen35moe")
    t.model.save_pretrained(tmp_path / "hf")
    base = tmp_path / "fused.gguf"
    write_llama_cpp_base(tmp_path / "hf", base, vendor, "--fuse-gate-up-exps")
    names = read_gguf(base).tensors
    assert "blk.0.ffn_gate_up_exps.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "in_proj_qkv"],
               target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    ref = make_peft_adapter(t.model, tmp_path / "a", cfg, seed=8)
    adapter = tmp_path / "a"
    if layout == "per-expert":
        per_expert_save(tmp_path / "a", tmp_path / "e", "qwen35moe", 4, t.model.config.hidden_size)
        adapter = tmp_path / "e"
    res = convert(adapter, base=base, out=tmp_path / "a.gguf", outtype="f32")
    shapes = dict(res.tensors)
    # the parts share PEFT's A (the per-expert rewrite copies it to gate and up): rank 4 kept
    assert shapes["blk.0.ffn_gate_up_exps.weight.lora_a"] == (4, 4, 64)
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > 0.05
    err = rel_err(llama_logits(base, TOKENS, lora_path=tmp_path / "a.gguf"), want)
    print(f"parity fused gate_up_exps qwen35moe/{layout}: {err:.2e}")
    assert err <= RTOL
