"""LoRA on MoE experts (Qwen3-MoE and the other MoE families), end to end, in both layouts trainers save: PEFT's
``target_parameters`` on transformers 5's fused 3-D experts (what PEFT 0.21 writes, also when
asked for ``gate_proj``/``up_proj``/``down_proj``), and transformers 4's per-expert modules
(``mlp.experts.E.up_proj``, rewritten from the former and loaded by PEFT itself as the
reference). Converted, run by edge-lora's runtime, combined, against transformers + PEFT
(relative error <= 1e-3, the adapter moving the logits by > 0.05), and llama.cpp's own converter
as a second oracle. (Merge and export are covered per architecture in test_merge.py and
test_export_peft.py.)"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter, peft_logits, per_expert_save
from llama_cpp_base import require_vendored_llama_cpp
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tiny_models import TOKENS, hf_logits, rel_err

from edge_lora import IncompatibleAdapterError, Runtime
from edge_lora.formats.adapter_file import OutTensor, write_adapter
from edge_lora.formats.gguf_file import read_gguf
from edge_lora.lora.adapter import read_gguf_lora
from edge_lora.merge import merge
from edge_lora_convert import combine, convert
from edge_lora_convert.export_peft import export_peft

RTOL = 1e-3
MIN_EFFECT = 0.05
EXPERTS_AND_Q = dict(r=8, lora_alpha=16, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"])
#: explicit target_parameters, the router's 2-D weight among them
FUSED = dict(r=4, lora_alpha=8, target_modules=["q_proj"],
             target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"])
N_EXPERTS = 4


def _logits(base: Path, adapters: dict[Path, float]) -> np.ndarray:
    with Runtime(base, n_ctx=64, kv_type="f32") as rt:
        for i, path in enumerate(adapters):
            rt.load_adapter(f"a{i}", path)
        return rt.logits(TOKENS, {f"a{i}": s for i, s in enumerate(adapters.values())})


def _check_parity(model, base: Path, gguf_path: Path, want: np.ndarray, label: str) -> float:
    """The adapter moves the logits (> MIN_EFFECT) and edge-lora's runtime gives PEFT's (<= RTOL)."""
    assert rel_err(want, hf_logits(model, TOKENS)) > MIN_EFFECT
    err = rel_err(_logits(base, {gguf_path: 1.0}), want)
    print(f"parity {label}: {err:.2e}")
    assert err <= RTOL
    return err


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
    # PEFT 0.21 trains gate_proj + up_proj as one gate_up_proj LoRA of rank 2 r
    assert shapes["blk.0.ffn_up_exps.weight.lora_a"] == (4, 16, 64)  # (experts, rank, in)
    assert shapes["blk.0.ffn_up_exps.weight.lora_b"] == (4, 48, 16)  # (experts, out, rank)
    assert shapes["blk.0.ffn_down_exps.weight.lora_a"] == (4, 8, 48)
    _check_parity(t.model, t.base_path, d / "a.gguf", peft_logits(ref, TOKENS), "moe runtime")


def _peft_from(model, folder: Path):
    return PeftModel.from_pretrained(copy.deepcopy(model), folder).eval()


@pytest.fixture(scope="module")
def fused(tiny, tmp_path_factory):
    """An explicit target_parameters save (router included) and its per-expert rewrite. (Not rsLoRA:
    PEFT 0.21.2 loads a per-expert rsLoRA save onto transformers 5 with gate and up fused into one
    LoRA of rank 2 r and alpha 2 alpha, which rsLoRA's alpha / sqrt(r) scales by sqrt(2): no reference.)"""
    t = tiny("qwen3moe")
    d = tmp_path_factory.mktemp("fused")
    ref = make_peft_adapter(t.model, d / "fused", FUSED, seed=4)
    per_expert_save(d / "fused", d / "per-expert", "qwen3moe", N_EXPERTS, t.model.config.hidden_size)
    return t, d, ref


#: gpt-oss stores its experts (E, in, out) with gate and up interleaved; its router is mlp.router
ROUTERS = {"qwen3moe": "mlp.gate.weight", "gptoss": "mlp.router.weight", "lfm2moe": "feed_forward.gate.weight",
           "granitehybrid": "block_sparse_moe.router.weight", "qwen35moe": "mlp.gate.weight",
           "granitemoe": "block_sparse_moe.router.weight"}
#: the experts module, where it is not mlp.experts
EXPERTS = {"lfm2moe": "feed_forward.experts", "granitehybrid": "block_sparse_moe.experts",
           "granitemoe": "block_sparse_moe.experts"}


@pytest.mark.parametrize("case", sorted(ROUTERS))
def test_target_parameters_with_the_router_match_peft(tiny, case, tmp_path):
    t = tiny(case)
    experts = EXPERTS.get(case, "mlp.experts")
    cfg = {**FUSED, "use_rslora": True,
           "target_parameters": [f"{experts}.gate_up_proj", f"{experts}.down_proj", ROUTERS[case]]}
    ref = make_peft_adapter(t.model, tmp_path / "fused", cfg, seed=6)
    res = convert(tmp_path / "fused", base=t.base_path, out=tmp_path / "f.gguf", outtype="f32")
    shapes = dict(res.tensors)
    assert shapes["blk.1.ffn_gate_inp.weight.lora_a"] == (4, 64)
    assert shapes["blk.1.ffn_up_exps.weight.lora_b"] == (4, 48, 4)
    want = peft_logits(ref, TOKENS)
    _check_parity(t.model, t.base_path, tmp_path / "f.gguf", want, f"{case} target_parameters (router, rsLoRA)")
    # and back: export writes transformers 5's fused parameters, which PEFT loads to the same logits
    export_peft(tmp_path / "f.gguf", tmp_path / "back", base=t.base_path)
    cfg_back = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert any(p.endswith(f".{experts}.gate_up_proj") for p in cfg_back["target_parameters"])
    err = rel_err(peft_logits(_peft_from(t.model, tmp_path / "back"), TOKENS), want)
    print(f"parity {case} export of target_parameters: {err:.2e}")
    assert err <= RTOL


def test_per_expert_saves_match_peft(fused, tmp_path):
    """transformers 4's layout: PEFT itself loads it onto the transformers 5 model (the reference)."""
    t, d, ref = fused
    want = peft_logits(_peft_from(t.model, d / "per-expert"), TOKENS)
    assert rel_err(want, peft_logits(ref, TOKENS)) <= 1e-6  # the rewrite is the same adapter
    convert(d / "per-expert", base=t.base_path, out=tmp_path / "e.gguf", outtype="f32")
    err = rel_err(_logits(t.base_path, {tmp_path / "e.gguf": 1.0}), want)
    print(f"parity moe per-expert: {err:.2e}")
    assert err <= RTOL


def test_the_orientation_of_older_peft_saves_is_read_from_the_shapes(fused, tmp_path):
    """PEFT before 0.21 let lora_A face the parameter's first axis, the output of an (E, out, in)
    parameter: the same change saved that way converts to the same logits."""
    t, d, ref = fused
    older = tmp_path / "older"
    older.mkdir()
    (older / "adapter_config.json").write_text((d / "fused" / "adapter_config.json").read_text())
    tensors = load_file(d / "fused" / "adapter_model.safetensors")
    for key in [k for k in tensors if ".mlp.experts." in k and ".lora_A." in k]:
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        r = a.shape[0] // N_EXPERTS
        a_e, b_e = a.reshape(N_EXPERTS, r, -1), b.reshape(b.shape[0], r, N_EXPERTS).permute(2, 0, 1)
        # W_e = B_e A_e = (A'_e^T ... ): A'_e = B_e^T (r, out), B'_e = A_e^T (in, r)
        tensors[key] = b_e.transpose(1, 2).reshape(N_EXPERTS * r, -1).contiguous()
        tensors[key.replace("lora_A", "lora_B")] = a_e.permute(2, 1, 0).reshape(a.shape[1], -1).contiguous()
    save_file(tensors, older / "adapter_model.safetensors", metadata={"format": "pt"})
    convert(older, base=t.base_path, out=tmp_path / "o.gguf", outtype="f32")
    err = rel_err(_logits(t.base_path, {tmp_path / "o.gguf": 1.0}), peft_logits(ref, TOKENS))
    print(f"parity moe older PEFT orientation: {err:.2e}")
    assert err <= RTOL


def test_llama_cpps_expert_adapter_loads_and_equals_ours(fused, tmp_path):
    """llama.cpp's convert_lora_to_gguf.py (from the pinned sdist the engine was built from) stacks
    complete per-expert LoRA (transformers 4's layout; not target_parameters): its file loads in
    edge-lora's runtime, matches PEFT, and holds the same factors as edge-lora's conversion."""
    t, d, ref = fused
    script = require_vendored_llama_cpp() / "convert_lora_to_gguf.py"
    src = tmp_path / "no-router"  # llama.cpp's converter has no LoRA name for a router's raw weight
    src.mkdir()
    cfg = json.loads((d / "per-expert" / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    kept = {k: v for k, v in load_file(d / "per-expert" / "adapter_model.safetensors").items() if ".mlp.gate." not in k}
    save_file(kept, src / "adapter_model.safetensors", metadata={"format": "pt"})
    t.model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "llama-cpp.gguf"
    proc = subprocess.run([sys.executable, str(script), str(src), "--base", str(tmp_path / "hf"),
                           "--outfile", str(out), "--outtype", "f32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = rel_err(_logits(t.base_path, {out: 1.0}), peft_logits(_peft_from(t.model, src), TOKENS))
    print(f"parity moe llama.cpp-written: {err:.2e}")
    assert err <= RTOL
    convert(src, base=t.base_path, out=tmp_path / "ours.gguf", outtype="f32")
    theirs, ours = read_gguf_lora(out, base=read_gguf(t.base_path)), read_gguf_lora(tmp_path / "ours.gguf")
    assert sorted(theirs.weights) == sorted(ours.weights)
    for name, w in ours.weights.items():
        np.testing.assert_allclose(theirs.weights[name].delta(), w.delta(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_experts_left_out_and_mixed_ranks_are_exact(fused, tmp_path):
    """llama.cpp's converter gives up unless every expert and projection is there at one rank;
    zero factors and zero rank-padding keep the result exact. The reference: PEFT on the fused
    save with the same experts' factors zeroed (and expert 2's gate cut to rank 2)."""
    t, d, _ = fused
    per_expert_save(d / "fused", tmp_path / "p", "qwen3moe", N_EXPERTS, t.model.config.hidden_size,
                    keep_experts={0, 2})
    cut = {k: v for k, v in load_file(tmp_path / "p" / "adapter_model.safetensors").items()}
    for side, axis in (("lora_A", 0), ("lora_B", 1)):
        for layer in (0, 1):
            key = f"base_model.model.model.layers.{layer}.mlp.experts.2.gate_proj.{side}.weight"
            cut[key] = cut[key].narrow(axis, 0, 2).contiguous()
    save_file(cut, tmp_path / "p" / "adapter_model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {r"experts\.2\.gate_proj": 2}
    cfg["alpha_pattern"] = {r"experts\.2\.gate_proj": 4}  # alpha / r as the other experts
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps(cfg))
    res = convert(tmp_path / "p", base=t.base_path, out=tmp_path / "p.gguf", outtype="f32")
    assert any("2 of 4 experts have no LoRA" in n for n in res.notes)
    assert any("zero-padded to rank 4" in n for n in res.notes)
    # the same change in PEFT's fused layout: experts 1 and 3 zeroed, expert 2's gate rows of rank >= 2 zeroed
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "adapter_config.json").write_text((d / "fused" / "adapter_config.json").read_text())
    fused_tensors = load_file(d / "fused" / "adapter_model.safetensors")
    r, ff = 4, 48
    for key in [k for k in fused_tensors if ".mlp.experts." in k and ".lora_B." in k]:
        b = fused_tensors[key].reshape(-1, r, N_EXPERTS).clone()
        b[:, :, [1, 3]] = 0
        if ".base_layer." in key:  # gate_up_proj: gate rows first
            b[:ff, 2:, 2] = 0
        fused_tensors[key] = b.reshape(b.shape[0], -1)
    save_file(fused_tensors, ref_dir / "adapter_model.safetensors", metadata={"format": "pt"})
    want = peft_logits(_peft_from(t.model, ref_dir), TOKENS)
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
    make_peft_adapter(t.model, tmp_path / "b", dict(r=4, lora_alpha=4, target_modules=["v_proj"],
                                                    target_parameters=["mlp.experts.gate_up_proj"]), seed=9)
    convert(tmp_path / "b", base=t.base_path, out=tmp_path / "b.gguf", outtype="f32")
    res = combine([(d / "a.gguf", 0.7), (tmp_path / "b.gguf", -0.5)], tmp_path / "ab.gguf", outtype="f32")
    assert {r.name: r.rank for r in res.tensors}["blk.1.ffn_up_exps.weight"] == 16 + 4
    hot = _logits(t.base_path, {d / "a.gguf": 0.7, tmp_path / "b.gguf": -0.5})
    err = rel_err(_logits(t.base_path, {tmp_path / "ab.gguf": 1.0}), hot)
    print(f"parity moe combine cat: {err:.2e}")
    assert err <= 1e-5
    # svd per expert: at the full rank exact; below it, each expert's best rank-r approximation
    full = combine([(d / "a.gguf", 0.7), (tmp_path / "b.gguf", -0.5)], tmp_path / "full.gguf", method="svd", rank=20,
                   outtype="f32")
    err = rel_err(_logits(t.base_path, {tmp_path / "full.gguf": 1.0}), hot)
    print(f"parity moe combine svd (full rank): {err:.2e}")
    assert err <= 1e-5 and full.worst.rel_error <= 1e-6
    low = combine([(d / "a.gguf", 0.7), (tmp_path / "b.gguf", -0.5)], tmp_path / "low.gguf", method="svd", rank=6,
                  outtype="f32")
    got = read_gguf_lora(tmp_path / "low.gguf").weights["blk.1.ffn_up_exps.weight"]
    assert got.a.shape == (4, 6, 64)
    srcs = [read_gguf_lora(d / "a.gguf", scale=0.7), read_gguf_lora(tmp_path / "b.gguf", scale=-0.5)]
    want = sum(src.weights["blk.1.ffn_up_exps.weight"].delta().astype(np.float64) for src in srcs)
    best = np.stack([(u[:, :6] * s[:6]) @ vt[:6] for u, s, vt in (np.linalg.svd(w) for w in want)])
    np.testing.assert_allclose(got.delta(), best, rtol=1e-3, atol=1e-4)  # numpy's truncated SVD, each expert
    lost = np.linalg.norm(want - best) / np.linalg.norm(want)
    reported = {t.name: t.rel_error for t in low.tensors}["blk.1.ffn_up_exps.weight"]
    assert abs(reported - lost) <= 1e-4, (reported, lost)


def test_gemma4_expert_lora_after_the_per_expert_scale(tiny, tmp_path):
    """Gemma 4 MoE: transformers scales each expert's whole output by router.per_expert_scale[e];
    llama.cpp applies it (ffn_down_exps.scale) before adding the down LoRA, so convert multiplies
    that LoRA's B by it, merge divides it out of the merged weight, export undoes it."""
    t = tiny("gemma4moe")
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "router.proj"],
               target_parameters=["experts.gate_up_proj", "experts.down_proj"])
    ref = make_peft_adapter(t.model, tmp_path / "a", cfg, seed=11)
    res = convert(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf", outtype="f32")
    shapes = dict(res.tensors)
    assert shapes["blk.0.ffn_gate_up_exps.weight.lora_b"] == (4, 96, 4)  # kept fused, as the base
    assert shapes["blk.0.ffn_down_exps.weight.lora_b"] == (4, 64, 4)
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    err = rel_err(_logits(t.base_path, {tmp_path / "a.gguf": 1.0}), want)
    print(f"parity gemma4moe experts: {err:.2e}")
    assert err <= RTOL
    merged = tmp_path / "merged.gguf"
    merge(t.base_path, [tmp_path / "a.gguf"], merged)
    err = rel_err(_logits(merged, {}), _logits(t.base_path, {tmp_path / "a.gguf": 1.0}))
    print(f"parity gemma4moe merge-vs-hot: {err:.2e}")
    assert err <= 1e-4
    export_peft(tmp_path / "a.gguf", tmp_path / "back", base=t.base_path)
    err = rel_err(peft_logits(_peft_from(t.model, tmp_path / "back"), TOKENS), want)
    print(f"parity gemma4moe export: {err:.2e}")
    assert err <= RTOL
