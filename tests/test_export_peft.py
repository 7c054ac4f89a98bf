"""``edge-lora export --peft``: a GGUF adapter back to a PEFT directory.

PEFT, loading the export on the transformers model, must give llama.cpp's logits with
the GGUF adapter; convert -> export -> convert must give the same bytes; refusals are
typed and leave nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from adapters import all_linear, linear_names, make_peft_adapter, peft_logits
from gguf.quants import dequantize
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.numpy import load_file as load_np
from tiny_models import CASES, TOKENS, hf_logits, is_moe, llama_logits, rel_err

from edge_lora.cli import main as cli
from edge_lora.errors import ConversionError, GGUFFileError, IncompatibleAdapterError, OutputExistsError
from edge_lora.formats.gguf_file import read_gguf
from edge_lora_convert import export_peft
from edge_lora_convert.export_peft import VLLM_MAX_LORA_RANKS, hf_module_names, vllm_notes
from edge_lora.families import FAMILIES
from edge_lora.families.llama import permute_rows

#: PEFT on the export against llama.cpp on the GGUF adapter (f32 base, f32 factors):
#: relative Frobenius error of the logits over all positions
PARITY_RTOL = 1e-3
#: the adapter must move the logits at least this much, or parity would prove nothing
MIN_EFFECT = 0.05
#: a Q8_0 adapter: PEFT computes with the dequantized factors, llama.cpp also quantizes the
#: activations of its Q8_0 matmuls (measured 1.8e-2 at an adapter effect of 1.26; llama.cpp on
#: the Q8_0 file is itself 2.4e-2 from the unquantized adapter)
Q8_RTOL = 3e-2


def _config(case: str, name: str) -> dict:
    names = linear_names(case)
    mlp_last = names[-1]
    return {
        "plain": dict(r=8, lora_alpha=16, **all_linear(case)),
        # mixed ranks (rank_pattern) and per-module alpha (folded into B by convert)
        "patterns": dict(r=8, lora_alpha=16, target_modules=names,
                         rank_pattern={names[0]: 4, f"layers.1.mlp.{mlp_last}": 12}, alpha_pattern={mlp_last: 40}),
        "rslora": dict(r=16, lora_alpha=8, use_rslora=True, target_modules=names),
        # untied bases only (llama.cpp would apply an embedding LoRA to a tied output too)
        "embedding": dict(r=8, lora_alpha=16, target_modules=["embed_tokens", names[0], "lm_head"]),
    }[name]


#: (case, config) pairs of the parity test: every architecture plain, variants where cheap
PARITY = [(c, "plain") for c in CASES] + [
    ("llama3", "patterns"), ("phi3", "patterns"), ("qwen2", "rslora"), ("gemma3", "rslora"), ("llama2", "embedding"),
]


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    """``converted(case, config, outtype)`` -> (PEFT reference model, its adapter folder, the GGUF
    converted from it), each built once for the module."""
    peft: dict[tuple[str, str], tuple[torch.nn.Module, Path]] = {}
    ggufs: dict[tuple[str, str, str], Path] = {}

    def get(case: str, config: str, outtype: str = "f32"):
        t = tiny(case)
        if (case, config) not in peft:
            folder = tmp_path_factory.mktemp(f"peft-{case}-{config}") / "adapter"
            peft[case, config] = (make_peft_adapter(t.model, folder, _config(case, config)), folder)
        ref, folder = peft[case, config]
        if (case, config, outtype) not in ggufs:
            out = tmp_path_factory.mktemp(f"gguf-{case}-{config}-{outtype}") / "a.gguf"
            assert cli(["convert", str(folder), "--base", str(t.base_path), "-o", str(out), "--outtype", outtype,
                        "-q"]) == 0
            ggufs[case, config, outtype] = out
        return ref, folder, ggufs[case, config, outtype]

    return get


def export(gguf_path: Path, out: Path, base: Path | None, *extra: str) -> int:
    argv = ["export", str(gguf_path), "--peft", str(out), "-q", *extra]
    return cli(argv + (["--base", str(base)] if base else []))


def load_peft(case_model, out: Path) -> torch.nn.Module:
    return PeftModel.from_pretrained(case_model, str(out)).eval()


@pytest.mark.parametrize("case,config", PARITY)
def test_peft_loads_export_with_llama_cpp_logits(tiny, converted, case, config, tmp_path):
    t = tiny(case)
    _, src, gguf_path = converted(case, config)
    assert export(gguf_path, tmp_path / "peft", t.base_path) == 0
    model = load_peft(t.fresh_model(), tmp_path / "peft")
    # PEFT took every exported tensor, and nothing else is a LoRA weight of the model
    written = load_np(str(tmp_path / "peft" / "adapter_model.safetensors"))
    state = {k: v.float().numpy() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    assert set(state) == set(written)
    for k, v in written.items():
        np.testing.assert_array_equal(state[k], v.astype(np.float32), err_msg=k)
    got = peft_logits(model, TOKENS)
    want = llama_logits(t.base_path, TOKENS, lora_path=gguf_path)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT, "the adapter barely changes the logits"
    err = rel_err(got, want)
    assert err <= PARITY_RTOL, f"PEFT on the export vs llama.cpp: relative error {err:.2e} > {PARITY_RTOL:g}"
    print(f"export parity {case}/{config}: {err:.3e}")
    # nothing folded: the export is the original PEFT adapter, bit for bit (not for MoE: PEFT saves its
    # gate_up_proj at rank 2 r with alpha 2 alpha, a scale the export writes into B)
    if config == "plain" and not is_moe(case):
        original = load_np(str(src / "adapter_model.safetensors"))
        assert set(original) == set(written)
        for k in original:
            np.testing.assert_array_equal(original[k], written[k], err_msg=k)


def test_config_is_plain_peft_lora(tiny, converted, tmp_path):
    t = tiny("llama3")
    _, _, gguf_path = converted("llama3", "patterns")
    result = export_peft(gguf_path, tmp_path / "peft", base=t.base_path)
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert (cfg["bias"], cfg["modules_to_save"], cfg["use_rslora"], cfg["use_dora"]) == ("none", None, False, False)
    assert (cfg["r"], cfg["lora_alpha"]) == (8, 16) and (result.r, result.lora_alpha, result.alpha) == (8, 16.0, 16.0)
    assert cfg["rank_pattern"] == {f"model.layers.{i}.self_attn.q_proj": 4 for i in (0, 1)} | {
        "model.layers.1.mlp.down_proj": 12}
    assert cfg["alpha_pattern"] == {}
    assert all(m.startswith("model.layers.") for m in cfg["target_modules"]) and len(cfg["target_modules"]) == 14
    assert any("rank_pattern" in n and n.startswith("vLLM") for n in result.notes)


def test_combined_adapter_alpha_zero_mixed_ranks(tiny, converted, tmp_path):
    """``combine`` writes alpha 0 (llama.cpp: scale 1) with every scale folded into B, and its
    ranks add up unevenly: the export says scale 1 with lora_alpha = r and alpha_pattern =
    rank_pattern, and PEFT on it matches llama.cpp on the combined file."""
    t = tiny("qwen2")
    plain, patterns = converted("qwen2", "plain")[2], converted("qwen2", "patterns")[2]
    both = tmp_path / "both.gguf"
    assert cli(["combine", f"{plain}:0.7", f"{patterns}:-0.5", "-o", str(both), "--outtype", "f32", "-q"]) == 0
    assert _alpha(both) == 0.0
    result = export_peft(both, tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] == cfg["r"] == 16 and cfg["alpha_pattern"] == cfg["rank_pattern"] != {}
    assert any("alpha is 0" in n for n in result.notes)
    got = peft_logits(load_peft(t.fresh_model(), tmp_path / "peft"), TOKENS)
    want = llama_logits(t.base_path, TOKENS, lora_path=both)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    err = rel_err(got, want)
    assert err <= PARITY_RTOL, f"PEFT on the export of a combined adapter vs llama.cpp: {err:.2e}"


def _tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in gguf.GGUFReader(path).tensors}


def _alpha(path: Path) -> float:
    field = gguf.GGUFReader(path).fields[gguf.Keys.Adapter.LORA_ALPHA]
    return float(field.parts[field.data[0]][0])


@pytest.mark.parametrize("case,config,outtype", [
    ("llama3", "patterns", "f32"), ("llama3", "patterns", "f16"), ("llama2", "embedding", "f16"),
    ("phi3", "plain", "bf16"), ("gemma2", "rslora", "f16"),
])
def test_round_trip_is_byte_exact(tiny, converted, case, config, outtype, tmp_path):
    t = tiny(case)
    _, _, first = converted(case, config, outtype)
    assert export(first, tmp_path / "peft", t.base_path) == 0
    again = tmp_path / "again.gguf"
    assert cli(["convert", str(tmp_path / "peft"), "--base", str(t.base_path), "-o", str(again),
                "--outtype", outtype, "-q"]) == 0
    a, b = _tensors(first), _tensors(again)
    assert set(a) == set(b)
    for name in a:
        assert a[name] == b[name], f"{name}: tensor type or bytes differ after convert -> export -> convert"
    assert _alpha(again) == _alpha(first)


def test_quantized_factors_become_f32_with_a_note(tiny, converted, tmp_path):
    t = tiny("llama3")
    _, _, q8 = converted("llama3", "plain", "q8_0")
    result = export_peft(q8, tmp_path / "peft", base=t.base_path)
    assert any("Q8_0" in n and "F32" in n for n in result.notes)
    # A (rows of 64) was Q8_0; B (rows of rank 8) could not be and stayed f16
    dtypes = {key.rsplit(".", 2)[-2]: set() for key, _, _ in result.tensors}
    for key, _, dtype in result.tensors:
        dtypes[key.rsplit(".", 2)[-2]].add(dtype)
    assert dtypes == {"lora_A": {"F32"}, "lora_B": {"F16"}}
    written = load_np(str(tmp_path / "peft" / "adapter_model.safetensors"))
    for t8 in gguf.GGUFReader(q8).tensors:  # the values are gguf's dequantization, exactly
        if t8.name == "blk.1.ffn_down.weight.lora_a":
            want_a = dequantize(t8.data, gguf.GGMLQuantizationType(t8.tensor_type))
            np.testing.assert_array_equal(written["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"], want_a)
    got = peft_logits(load_peft(t.fresh_model(), tmp_path / "peft"), TOKENS)
    want = llama_logits(t.base_path, TOKENS, lora_path=q8)
    assert rel_err(got, want) <= Q8_RTOL


def test_reverse_names_are_the_models_modules(tiny):
    """The reverse table names a module of the transformers model for every tensor of the base
    (an expert tensor: the experts module and its fused parameter export writes), and covers
    every linear layer and the embedding of the model."""
    for case in CASES:
        t = tiny(case)
        base_info = read_gguf(t.base_path)
        spec = FAMILIES[base_info.architecture]  # dense Granite 4 (granitemoehybrid) is a granite base
        modules = dict(t.model.named_modules())
        names = hf_module_names(spec, t.model.config.num_hidden_layers, base_info)
        base = base_info.tensors
        in_base = set()
        for g, (_, m) in names.items():
            if g not in base:
                continue
            if len(base[g].shape) == 3:  # an expert tensor: transformers 5's experts module holds its parameter
                experts = spec.experts_path.format(bid=spec.layer_of(m))
                assert any(hasattr(modules[experts], f.param) and spec.fused_expert(experts, f.param)
                           for f in spec.fused_experts), (case, g)
                in_base.add(experts)
            else:
                in_base.add(m)
        assert in_base <= set(modules), (case, sorted(in_base - set(modules)))
        adaptable = {n for n, m in modules.items() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
        refused = {n for n in adaptable if spec.no_lora_reason(n)}  # llama.cpp multiplies them without LoRA
        split = {n for n in adaptable if spec.split_targets(n, base)}  # split by rows, joined again on export
        assert adaptable - in_base - refused - split <= {"lm_head"}, (case, sorted(adaptable - in_base))


@pytest.mark.parametrize("n_head,n_head_kv", [(4, 4), (4, 2), (8, 1)])
def test_unpermute_inverts_the_table(n_head, n_head_kv):
    rows = 16 * (n_head if n_head_kv == n_head else n_head_kv)
    b = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    order = permute_rows(np.arange(rows), n_head, n_head_kv)
    np.testing.assert_array_equal(permute_rows(b, n_head, n_head_kv)[np.argsort(order)], b)


def test_vllm_notes():
    assert vllm_notes({"a": 16, "b": 16}, 16) == []  # vLLM's defaults take it as it is
    assert "--max-lora-rank 32" in vllm_notes({"m": 24}, 24)[0] and 32 in VLLM_MAX_LORA_RANKS
    assert "at most 512" in vllm_notes({"m": 600}, 600)[0]
    assert any("rank_pattern" in n for n in vllm_notes({"a": 8, "b": 4}, 8))
    assert any("embedding_modules" in n for n in vllm_notes({"model.embed_tokens": 8}, 8, ["model.embed_tokens"]))


# --- refusals ------------------------------------------------------------------------


def test_existing_output_needs_force_and_force_replaces_atomically(converted, tmp_path):
    _, _, gguf_path = converted("qwen3", "plain")
    out = tmp_path / "peft"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        export_peft(gguf_path, out)
    assert export(gguf_path, out, None) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --force replaces an adapter folder, never a folder holding other files
    assert export(gguf_path, out, None, "--force") == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    assert export(gguf_path, out, None) == 2
    assert export(gguf_path, out, None, "--force") == 0
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert export(gguf_path, out, None, "--force") == 0  # an adapter folder is replaced
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["peft"], "temporary folders left beside the output"


def test_llama_qk_without_base_refused(converted, tmp_path):
    _, _, gguf_path = converted("llama2", "plain")
    with pytest.raises(ConversionError, match="--base") as err:
        export_peft(gguf_path, tmp_path / "peft")
    assert "blk.0.attn_q.weight" in str(err.value) and "blk.1.attn_k.weight" in str(err.value)
    assert export(gguf_path, tmp_path / "peft", None) == 2
    assert list(tmp_path.iterdir()) == []


def test_base_given_as_adapter_refused(tiny, tmp_path):
    base = tiny("qwen2").base_path
    with pytest.raises(GGUFFileError, match="not 'adapter'"):
        export_peft(base, tmp_path / "peft")

    assert export(base, tmp_path / "peft", None) == 2
    assert not (tmp_path / "peft").exists()


def test_adapter_given_as_base_refused(converted, tmp_path):
    """The same condition, the same class as convert, merge and the runtime: the wrong kind of GGUF file."""
    _, _, gguf_path = converted("qwen2", "plain")
    with pytest.raises(GGUFFileError, match="--base is a LoRA adapter, not a base model"):
        export_peft(gguf_path, tmp_path / "peft", base=gguf_path)
    assert not (tmp_path / "peft").exists()


def test_adapter_on_another_base_refused(tiny, converted, tmp_path):
    _, _, gguf_path = converted("qwen2", "plain")
    with pytest.raises(IncompatibleAdapterError, match="architecture"):
        export_peft(gguf_path, tmp_path / "peft", base=tiny("llama2").base_path)


def test_output_holding_the_adapter_refused_even_with_force(converted, tmp_path):
    _, _, gguf_path = converted("gemma2", "plain")
    with pytest.raises(OutputExistsError, match="input"):
        export_peft(gguf_path, gguf_path.parent, overwrite=True)
    assert gguf_path.exists()
