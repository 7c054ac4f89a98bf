"""Converted adapters run in llama.cpp give transformers + PEFT's logits.

Each adapter is converted through the CLI and loaded with llama-cpp-python's plain
``Llama(model_path=..., lora_path=...)`` on the tiny f32 base.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from adapters import all_linear, linear_names, make_mlx_adapter, make_peft_adapter, peft_logits
from tiny_models import CASES, TOKENS, hf_logits, is_tied, llama_logits, rel_err, write_gguf_base

from edge_lora.cli import main as cli
from edge_lora.errors import ConversionError
from edge_lora_convert import convert as convert_api

#: llama.cpp (f32 base, f32 adapter) against PEFT: relative Frobenius error over all positions
PARITY_RTOL = 1e-3
#: an adapter must move the logits at least this much, or parity would prove nothing
MIN_EFFECT = 0.05
#: storage types: what rounding the factors costs, relative to the PEFT logits
OUTTYPE_RTOL = {"f32": 1e-3, "f16": 2e-3, "bf16": 1e-2, "q8_0": 1e-2}


def _configs(case: str, n_layers: int) -> dict[str, tuple[dict, str]]:
    names = linear_names(case)
    attn0, attn_out, mlp_last = names[0], names[-3] if case != "phi3" else names[1], names[-1]
    return {
        "plain": (dict(r=8, lora_alpha=16, **all_linear(case)), "safetensors"),
        "rslora": (dict(r=16, lora_alpha=8, use_rslora=True, target_modules=names), "safetensors"),
        "patterns": (
            dict(
                r=8,
                lora_alpha=16,
                target_modules=names,
                rank_pattern={attn0: 4, f"layers.1.mlp.{mlp_last}": 12},
                alpha_pattern={attn_out: 4, mlp_last: 40},
            ),
            "safetensors",
        ),
        "layers": (dict(r=8, lora_alpha=8, target_modules=names, layers_to_transform=[0, n_layers - 1]), "safetensors"),
        "regex": (dict(r=4, lora_alpha=8, target_modules=r".*\.layers\.1\..*_proj"), "safetensors"),
        "bf16": (dict(r=8, lora_alpha=16, target_modules=names), "bf16"),
        "bin": (dict(r=8, lora_alpha=32, target_modules=names), "bin"),
        "embedding": (dict(r=8, lora_alpha=16, target_modules=["embed_tokens", attn0]), "safetensors"),
    }


CONFIG_NAMES = ["plain", "rslora", "patterns", "layers", "regex", "bf16", "bin", "embedding"]


def convert(adapter: Path, base: Path, out: Path, *extra: str) -> None:
    argv = ["convert", str(adapter), "--base", str(base), "-o", str(out), "--outtype", "f32", "-q", *extra]
    assert cli(argv) == 0
    assert out.exists()


def check_parity(base_path: Path, lora: Path, want, base_logits, rtol: float = PARITY_RTOL) -> float:
    assert rel_err(want, base_logits) > MIN_EFFECT, "the adapter barely changes the logits"
    got = llama_logits(base_path, TOKENS, lora_path=lora)
    err = rel_err(got, want)
    assert err <= rtol, f"llama.cpp vs PEFT relative error {err:.2e} > {rtol:g}"
    return err


#: cases whose lm_head is tied to the token embedding (llama.cpp shares one tensor)
TIED = [c for c in CASES if is_tied(c)]


@pytest.mark.parametrize(
    "case,config",
    [(c, k) for c in CASES for k in CONFIG_NAMES if not (k == "embedding" and c in TIED)],
)
def test_peft_parity(tiny, case, config, tmp_path):
    t = tiny(case)
    assert t.model.config.tie_word_embeddings == (case in TIED)
    n_layers = t.model.config.num_hidden_layers
    cfg, storage = _configs(case, n_layers)[config]
    ref = make_peft_adapter(t.model, tmp_path / "adapter", cfg, storage=storage)
    out = tmp_path / "adapter.gguf"
    convert(tmp_path / "adapter", t.base_path, out)
    err = check_parity(t.base_path, out, peft_logits(ref, TOKENS), hf_logits(t.model, TOKENS))
    print(f"parity {case}/{config}: {err:.3e}")


def test_lm_head_lora_on_untied_base(tiny, tmp_path):
    t = tiny("llama2")
    assert not t.model.config.tie_word_embeddings
    ref = make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules=["q_proj", "lm_head"]))
    convert(tmp_path / "a", t.base_path, tmp_path / "a.gguf")
    err = check_parity(t.base_path, tmp_path / "a.gguf", peft_logits(ref, TOKENS), hf_logits(t.model, TOKENS))
    print(f"parity lm_head llama2: {err:.3e}")


@pytest.mark.parametrize("case", TIED)
def test_embedding_lora_on_tied_base_refused(tiny, case, tmp_path):
    """With tied weights llama.cpp's output layer *is* token_embd: an embedding LoRA would
    be applied there too (and abort on the shape), where PEFT applies it to the input only."""
    t = tiny(case)
    assert t.model.config.tie_word_embeddings
    make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules=["embed_tokens", "q_proj"]))
    with pytest.raises(ConversionError, match="output shares the token embedding") as err:
        convert_api(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf")
    assert "embed_tokens" in str(err.value)
    assert not (tmp_path / "a.gguf").exists()


@pytest.mark.parametrize("case", ["llama2", "gemma3", "phi3", "qwen2"])
def test_mlx_parity(tiny, case, tmp_path):
    t = tiny(case)
    keys = ["self_attn.qkv_proj", "mlp.down_proj"] if case == "phi3" else ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"]
    ref = make_mlx_adapter(t.model, tmp_path / "mlx", keys, rank=8, scale=4.0, num_layers=2)
    convert(tmp_path / "mlx", t.base_path, tmp_path / "mlx.gguf")
    err = check_parity(t.base_path, tmp_path / "mlx.gguf", hf_logits(ref, TOKENS), hf_logits(t.model, TOKENS))
    print(f"parity mlx {case}: {err:.3e}")


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_outtypes(tiny, outtype, tmp_path):
    t = tiny("llama3")
    ref = make_peft_adapter(t.model, tmp_path / "a", dict(r=32, lora_alpha=16, target_modules="all-linear"))
    out = tmp_path / "a.gguf"
    convert(tmp_path / "a", t.base_path, out, "--outtype", outtype)
    err = check_parity(t.base_path, out, peft_logits(ref, TOKENS), hf_logits(t.model, TOKENS), OUTTYPE_RTOL[outtype])
    print(f"parity outtype {outtype}: {err:.3e}")


#: on a Q8_0 base both sides carry the base's quantization error; the LoRA delta itself
#: (adapter logits minus base logits, llama.cpp vs PEFT) must still agree this closely
#: (measured 2.8e-2 to 2.9e-2; leaving out the Q/K permutation gives 0.68)
QUANT_DELTA_RTOL = 5e-2


@pytest.mark.parametrize("case", ["llama3", "gemma3"])
def test_quantized_base(tiny, case, tmp_path):
    """A quantized base is enough to convert against (shapes come from its tensor table)."""
    from tiny_models import quantize_base

    t = tiny(case)
    qbase = quantize_base(t.base_path, tmp_path / "base-q8_0.gguf")
    ref = make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules="all-linear"))
    convert(tmp_path / "a", qbase, tmp_path / "a.gguf")
    want_delta = peft_logits(ref, TOKENS) - hf_logits(t.model, TOKENS)
    got_delta = llama_logits(qbase, TOKENS, lora_path=tmp_path / "a.gguf") - llama_logits(qbase, TOKENS)
    err = rel_err(got_delta, want_delta)
    assert err <= QUANT_DELTA_RTOL, f"LoRA delta on the Q8_0 base: {err:.2e}"
    print(f"parity q8_0-base {case}: {err:.3e}")


def test_f16_safetensors_storage(tiny, tmp_path):
    t = tiny("qwen3")
    ref = make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules="all-linear"), storage="f16")
    convert(tmp_path / "a", t.base_path, tmp_path / "a.gguf")
    check_parity(t.base_path, tmp_path / "a.gguf", peft_logits(ref, TOKENS), hf_logits(t.model, TOKENS))


def test_a_llama_adapter_runs_on_a_mistral3_base(tiny, tmp_path):
    """llama.cpp writes Mistral Small 3.x as mistral3 now, as llama before: an adapter converted for
    the llama base of the same model runs on the mistral3 one (same tensors, both Q/K permuted)."""
    from edge_lora import Runtime

    m3 = tiny("mistral3")
    ref = make_peft_adapter(m3.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=4)
    write_gguf_base(m3.model, tmp_path / "llama-base.gguf", arch="llama")
    convert(tmp_path / "a", tmp_path / "llama-base.gguf", tmp_path / "a.gguf")
    with Runtime(m3.base_path, n_ctx=64, kv_type="f32") as rt:
        rt.load_adapter("a", tmp_path / "a.gguf")
        got = rt.logits(TOKENS, {"a": 1.0})
    err = rel_err(got, peft_logits(ref, TOKENS))
    print(f"parity mistral3 base / llama adapter: {err:.2e}")
    assert err <= PARITY_RTOL
