"""LoRA on MoE experts (Qwen3-MoE, transformers 4's per-expert layout), end to end: converted,
run by edge-lora's runtime, combined, against transformers + PEFT (relative error <= 1e-3, the
adapter moving the logits by > 0.05), and llama.cpp's own converter as a second oracle.
(Merge and export are covered per architecture in test_merge.py and test_export_peft.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter, peft_logits
from tiny_models import TOKENS, hf_logits, rel_err

from edge_lora import IncompatibleAdapterError, InvalidRequestError, Runtime
from edge_lora.formats.adapter_file import OutTensor, write_adapter
from edge_lora.formats.gguf_file import read_gguf
from edge_lora.lora.adapter import read_gguf_lora
from edge_lora_convert import combine, convert

RTOL = 1e-3
MIN_EFFECT = 0.05
ROOT = Path(__file__).resolve().parent.parent
EXPERTS_AND_Q = dict(r=8, lora_alpha=16, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"])


def _logits(base: Path, adapters: dict[Path, float]) -> np.ndarray:
    with Runtime(base, n_ctx=64, kv_type="f32") as rt:
        for i, path in enumerate(adapters):
            rt.load_adapter(f"a{i}", path)
        return rt.logits(TOKENS, {f"a{i}": s for i, s in enumerate(adapters.values())})


@pytest.fixture(scope="module")
def moe(tiny, tmp_path_factory):
    t = tiny("qwen3moe")
    d = tmp_path_factory.mktemp("moe")
    ref = make_peft_adapter(t.model, d / "peft", EXPERTS_AND_Q, seed=3)
    res = convert(d / "peft", base=t.base_path, out=d / "a.gguf", outtype="f32")
    return t, d, ref, res


def test_expert_lora_runs_in_the_runtime_as_peft(moe):
    t, d, ref, res = moe
    shapes = dict(res.tensors)
    assert shapes["blk.0.ffn_up_exps.weight.lora_a"] == (4, 8, 64)  # (experts, rank, in)
    assert shapes["blk.0.ffn_up_exps.weight.lora_b"] == (4, 48, 8)  # (experts, out, rank)
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    err = rel_err(_logits(t.base_path, {d / "a.gguf": 1.0}), want)
    print(f"parity moe runtime: {err:.2e}")
    assert err <= RTOL


def _vendored_llama_cpp() -> Path | None:
    found = sorted(ROOT.glob("build/engine-*/_src/llama_cpp_python-*/vendor/llama.cpp/convert_lora_to_gguf.py"))
    return found[0] if found else None


def test_llama_cpps_expert_adapter_loads_and_equals_ours(moe, tmp_path):
    """llama.cpp's convert_lora_to_gguf.py (from the pinned sdist the engine was built from) stacks
    complete per-expert LoRA too: its file loads in edge-lora's runtime, matches PEFT, and holds
    the same factors as edge-lora's conversion."""
    t, d, ref, _ = moe
    script = _vendored_llama_cpp()
    if script is None:
        if os.environ.get("CI"):
            pytest.fail("the engine build tree (build/engine-*/_src) is missing: make builds it")
        pytest.skip("no engine build tree with llama.cpp's converter")
    t.model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "llama-cpp.gguf"
    proc = subprocess.run([sys.executable, str(script), str(d / "peft"), "--base", str(tmp_path / "hf"),
                           "--outfile", str(out), "--outtype", "f32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = rel_err(_logits(t.base_path, {out: 1.0}), peft_logits(ref, TOKENS))
    print(f"parity moe llama.cpp-written: {err:.2e}")
    assert err <= RTOL
    theirs, ours = read_gguf_lora(out, base=read_gguf(t.base_path)), read_gguf_lora(d / "a.gguf")
    assert sorted(theirs.weights) == sorted(ours.weights)
    for name, w in ours.weights.items():
        np.testing.assert_allclose(theirs.weights[name].delta(), w.delta(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_experts_left_out_and_mixed_ranks_are_exact(tiny, tmp_path):
    """llama.cpp's converter gives up unless every expert and projection is there at one rank;
    zero factors and zero rank-padding keep the result exact."""
    t = tiny("qwen3moe")
    cfg = dict(r=4, lora_alpha=8, target_modules=r".*\.experts\.[02]\.(gate|down)_proj",
               rank_pattern={r"experts\.2\.gate_proj": 6})
    ref = make_peft_adapter(t.model, tmp_path / "p", cfg, seed=5)
    res = convert(tmp_path / "p", base=t.base_path, out=tmp_path / "p.gguf", outtype="f32")
    assert any("2 of 4 experts have no LoRA" in n for n in res.notes)
    assert any("zero-padded to rank 6" in n for n in res.notes)
    assert dict(res.tensors)["blk.0.ffn_gate_exps.weight.lora_a"] == (4, 6, 64)
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    err = rel_err(_logits(t.base_path, {tmp_path / "p.gguf": 1.0}), want)
    print(f"parity moe partial experts: {err:.2e}")
    assert err <= RTOL


def test_a_wrong_expert_count_is_refused(moe, tmp_path):
    """llama.cpp's loader does not check the expert count (it would reach ggml_mul_mat_id): edge-lora does."""
    t, d, _, _ = moe
    src = read_gguf_lora(d / "a.gguf")
    tensors = []
    for name, w in src.weights.items():
        a, b = (w.a[:3], w.b[:3]) if w.a.ndim == 3 else (w.a, w.b)  # 3 of the base's 4 experts
        tensors += [OutTensor(name + ".lora_a", a), OutTensor(name + ".lora_b", b)]
    bad = tmp_path / "three.gguf"
    write_adapter(bad, "qwen3moe", 16.0, tensors, "f32", {}, progress=False)
    with Runtime(t.base_path, n_ctx=64) as rt, pytest.raises(IncompatibleAdapterError, match="ffn_up_exps") as err:
        rt.load_adapter("bad", bad)
    assert "do not fit the base weight (4, 48, 64)" in str(err.value)


def test_combine_stacks_experts_exactly(moe, tmp_path):
    t, d, _, _ = moe
    make_peft_adapter(t.model, tmp_path / "b", dict(r=4, lora_alpha=4, target_modules=["up_proj", "v_proj"]), seed=9)
    convert(tmp_path / "b", base=t.base_path, out=tmp_path / "b.gguf", outtype="f32")
    res = combine([(d / "a.gguf", 0.7), (tmp_path / "b.gguf", -0.5)], tmp_path / "ab.gguf", outtype="f32")
    assert {r.name: r.rank for r in res.tensors}["blk.1.ffn_up_exps.weight"] == 12
    hot = _logits(t.base_path, {d / "a.gguf": 0.7, tmp_path / "b.gguf": -0.5})
    err = rel_err(_logits(t.base_path, {tmp_path / "ab.gguf": 1.0}), hot)
    print(f"parity moe combine cat: {err:.2e}")
    assert err <= 1e-5
    with pytest.raises(InvalidRequestError, match="svd of experts LoRA"):
        combine([d / "a.gguf", tmp_path / "b.gguf"], tmp_path / "svd.gguf", method="svd", rank=4)
