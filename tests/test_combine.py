"""``edge-lora combine``: GGUF adapters combined into one, against llama.cpp running them together.

The reference for ``cat`` and full-rank ``svd`` is the runtime with every input adapter loaded
at once, each at its scale (itself checked against transformers + PEFT in test_runtime.py).
Low-rank ``svd`` is checked in numpy: the reported per-tensor error against a direct
measurement, and the truncation against numpy's SVD of the full matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter
from tiny_models import TOKENS, llama_logits, rel_err

from edge_lora import Runtime
from edge_lora.cli import main as cli
from edge_lora.lora.compat import adapter_problems
from edge_lora.errors import GGUFFileError, IncompatibleAdapterError, InvalidRequestError, OutputExistsError
from edge_lora.formats.gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, TOKEN_EMBD_TENSOR, read_gguf
from edge_lora.lora.adapter import read_gguf_lora
from edge_lora_convert import combine, convert
from edge_lora.formats.keys import CombineKeys
from edge_lora_convert.combine import low_rank
from edge_lora.formats.adapter_file import OutTensor, write_adapter
from gguf import Keys

#: combined file vs the inputs loaded together (f32 base, f32 factors, f32 KV): relative logits error
EXACT_RTOL = 1e-4
#: the adapters together must move the logits at least this much, or the comparison proves nothing
MIN_EFFECT = 0.05
#: reported svd error vs ||D - B@A|| / ||D|| measured in numpy (absolute)
REPORT_ATOL = 1e-5
#: numpy truncation vs numpy's SVD of the full matrix (relative, float64)
SVD_RTOL = 1e-9

SCALES = {"a": 1.0, "b": -0.7, "c": 0.5}


def _configs(case: str) -> dict[str, dict]:
    """Different ranks; q/v touched by a and b, k/o by a only, down by b only, gate/up (and the
    token embedding on an untied base) by c only."""
    c_targets = ["gate_proj", "up_proj"] + (["embed_tokens"] if case == "llama2" else [])
    return {
        "a": dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        "b": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
        "c": dict(r=6, lora_alpha=12, target_modules=c_targets),
    }


@dataclass
class World:
    case: str
    base: Path
    ggufs: dict[str, Path]
    rt: Runtime
    want: np.ndarray  # the runtime's logits with a, b, c at SCALES


@pytest.fixture(scope="module", params=["llama2", "gemma3"])
def world(request, tiny, tmp_path_factory):
    case = request.param
    t = tiny(case)
    tmp = tmp_path_factory.mktemp(f"combine-{case}")
    ggufs = {}
    for i, (name, cfg) in enumerate(_configs(case).items()):
        make_peft_adapter(t.model, tmp / name, cfg, seed=20 + i)
        ggufs[name] = tmp / f"{name}.gguf"
        convert(tmp / name, base=t.base_path, out=ggufs[name], outtype="f32")
    rt = Runtime(t.base_path, n_ctx=128, kv_type="f32", n_threads=2)
    for name, path in ggufs.items():
        rt.load_adapter(name, path)
    want = rt.logits(TOKENS, SCALES)
    assert rel_err(want, rt.logits(TOKENS)) > MIN_EFFECT, "the adapters barely change the logits"
    yield World(case, t.base_path, ggufs, rt, want)
    rt.close()


def _inputs(w: World) -> list[tuple[Path, float]]:
    return [(w.ggufs[n], s) for n, s in SCALES.items()]


def _combined_logits(w: World, path: Path, scale: float = 1.0) -> np.ndarray:
    w.rt.load_adapter("combined", path)
    return w.rt.logits(TOKENS, {"combined": scale})


def test_cat_equals_the_adapters_together(world, tmp_path):
    out = tmp_path / "cat.gguf"
    res = combine(_inputs(world), out, method="cat", outtype="f32")
    info = read_gguf(out)
    assert adapter_problems(info, read_gguf(world.base)) == []  # alpha 0 passes edge-lora's checks
    assert info.metadata[Keys.Adapter.LORA_ALPHA] == 0.0
    ranks = {t.name: t.rank for t in res.tensors}
    assert ranks["blk.0.attn_q.weight"] == 12 and ranks["blk.0.attn_k.weight"] == 8
    assert ranks["blk.0.ffn_down.weight"] == 4 and ranks["blk.0.ffn_up.weight"] == 6
    assert (TOKEN_EMBD_TENSOR in ranks) == (world.case == "llama2")
    assert all(t.rel_error is None for t in res.tensors) and res.worst is None

    err = rel_err(_combined_logits(world, out), world.want)
    assert err <= EXACT_RTOL, f"cat vs the adapters together: {err:.2e}"
    plain = rel_err(llama_logits(world.base, TOKENS, lora_path=out), world.want)  # llama-cpp-python's own loader
    assert plain <= EXACT_RTOL, f"cat through llama_cpp.Llama(lora_path=...): {plain:.2e}"
    # alpha 0: the user's scale alone multiplies the file, so scale 0.5 halves every input's scale
    half = world.rt.logits(TOKENS, {n: 0.5 * s for n, s in SCALES.items()})
    err2 = rel_err(world.rt.logits(TOKENS, {"combined": 0.5}), half)
    assert err2 <= EXACT_RTOL, f"cat at scale 0.5: {err2:.2e}"
    print(f"combine cat {world.case}: {err:.3e} (scale 0.5: {err2:.3e})")


def test_svd_at_full_rank_is_exact(world, tmp_path):
    out = tmp_path / "svd.gguf"
    full = 8 + 4  # the largest combined rank (q and v: a + b)
    res = combine(_inputs(world), out, method="svd", rank=full, outtype="f32")
    assert max(t.rank_in for t in res.tensors) == full
    assert res.worst is not None and res.worst.rel_error <= 1e-6
    err = rel_err(_combined_logits(world, out), world.want)
    assert err <= EXACT_RTOL, f"svd at full rank vs the adapters together: {err:.2e}"
    print(f"combine svd full rank {world.case}: {err:.3e}")


def _delta64(name: str, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return scale * (a64 @ b64.T if name == TOKEN_EMBD_TENSOR else b64 @ a64)


def test_svd_low_rank_reports_the_measured_error(world, tmp_path):
    out = tmp_path / "svd3.gguf"
    res = combine(_inputs(world), out, method="svd", rank=3, outtype="f32")
    sources = [read_gguf_lora(p, scale=s) for p, s in _inputs(world)]
    got = read_gguf_lora(out)
    worst = 0.0
    for t in res.tensors:
        d = sum(_delta64(t.name, s.weights[t.name].a, s.weights[t.name].b, s.weights[t.name].scale)
                for s in sources if t.name in s.weights)
        g = got.weights[t.name]
        assert g.rank == t.rank == 3 and g.scale == 1.0
        measured = np.linalg.norm(d - _delta64(t.name, g.a, g.b, g.scale)) / np.linalg.norm(d)
        assert abs(measured - t.rel_error) <= REPORT_ATOL, f"{t.name}: reported {t.rel_error} measured {measured}"
        worst = max(worst, measured)
    assert res.worst.rel_error == max(t.rel_error for t in res.tensors)
    assert worst > 0.05  # rank 3 of ranks 4-12 really loses something
    assert read_gguf(out).metadata[CombineKeys.RANK] == 3
    logit_err = rel_err(_combined_logits(world, out), world.want)
    print(f"combine svd rank 3 {world.case}: worst tensor error {res.worst.rel_error:.3f} "
          f"({res.worst.name}), logits {logit_err:.3e}")


@pytest.mark.parametrize("m,n,k,rank", [(64, 48, 12, 5), (10, 80, 16, 4), (30, 20, 40, 25), (16, 16, 6, 6)])
def test_low_rank_matches_numpy_svd_of_the_full_matrix(m, n, k, rank):
    rng = np.random.default_rng(m * n + k)
    left, right = rng.standard_normal((m, k)), rng.standard_normal((n, k))
    d = left @ right.T
    u, s, v, rel = low_rank(left, right, rank)
    us, ss, vts = np.linalg.svd(d, full_matrices=False)
    best = (us[:, :rank] * ss[:rank]) @ vts[:rank]
    assert np.linalg.norm((u * s) @ v.T - best) <= SVD_RTOL * np.linalg.norm(d)
    assert abs(rel - np.linalg.norm(d - best) / np.linalg.norm(d)) <= SVD_RTOL
    assert u.shape[1] == min(rank, m, n, k)


def test_low_rank_of_zero_is_zero_error():
    u, s, v, rel = low_rank(np.zeros((8, 3)), np.zeros((5, 3)), 2)
    assert rel == 0.0 and not s.any()


# --- refusals, on small synthetic adapters ---------------------------------------------

Q = "blk.0.attn_q.weight"


def _adapter(path: Path, arch: str = "llama", tensors: dict | None = None, alpha: float = 8.0, seed: int = 0) -> Path:
    """A GGUF adapter written directly: ``tensors`` maps base names to (rank, out, in)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, (r, o, i) in (tensors or {Q: (4, 64, 64)}).items():
        a_shape, b_shape = ((o, r), (i, r)) if name == TOKEN_EMBD_TENSOR else ((r, i), (o, r))
        out += [OutTensor(name + LORA_A_SUFFIX, rng.standard_normal(a_shape).astype(np.float32)),
                OutTensor(name + LORA_B_SUFFIX, rng.standard_normal(b_shape).astype(np.float32))]
    write_adapter(path, arch, alpha, out, "f32", {}, False)
    return path


def test_cat_of_synthetic_adapters_is_the_sum(tmp_path):
    """Layouts checked in numpy too: a linear tensor and token_embd, touched by one or both."""
    x = _adapter(tmp_path / "x.gguf", tensors={Q: (4, 32, 48), TOKEN_EMBD_TENSOR: (3, 100, 48)}, alpha=8, seed=1)
    y = _adapter(tmp_path / "y.gguf", tensors={Q: (2, 32, 48), "blk.1.ffn_up.weight": (5, 64, 48)}, alpha=0, seed=2)
    res = combine([(x, 0.5), (y, -2.0)], tmp_path / "xy.gguf", outtype="f32")
    got = read_gguf_lora(tmp_path / "xy.gguf")
    srcs = [read_gguf_lora(x, scale=0.5), read_gguf_lora(y, scale=-2.0)]
    for name in (Q, TOKEN_EMBD_TENSOR, "blk.1.ffn_up.weight"):
        want = sum(_delta64(name, s.weights[name].a, s.weights[name].b, s.weights[name].scale)
                   for s in srcs if name in s.weights)
        g = got.weights[name]
        assert np.linalg.norm(_delta64(name, g.a, g.b, g.scale) - want) <= 1e-6 * np.linalg.norm(want), name
    assert {t.name: t.rank for t in res.tensors} == {Q: 6, TOKEN_EMBD_TENSOR: 3, "blk.1.ffn_up.weight": 5}
    meta = read_gguf(tmp_path / "xy.gguf").metadata
    assert meta[Keys.General.TYPE] == "adapter" and meta[Keys.Adapter.TYPE] == "lora"
    assert adapter_problems(read_gguf(tmp_path / "xy.gguf"), None) == []
    prov = [json.loads(s) for s in meta[CombineKeys.COMBINED_FROM]]
    assert [(p["name"], p["scale"]) for p in prov] == [("x.gguf", 0.5), ("y.gguf", -2.0)]
    assert all(len(p["sha256"]) == 64 for p in prov) and meta[CombineKeys.METHOD] == "cat"


def test_refuses_different_architectures(tmp_path, capsys):
    x = _adapter(tmp_path / "x.gguf", "llama")
    y = _adapter(tmp_path / "y.gguf", "gemma3")
    with pytest.raises(IncompatibleAdapterError, match="different architectures") as err:
        combine([x, y], tmp_path / "o.gguf")
    assert "'llama'" in str(err.value) and "'gemma3'" in str(err.value)
    assert cli(["combine", str(x), str(y), "-o", str(tmp_path / "o.gguf")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert not (tmp_path / "o.gguf").exists()


def test_refuses_mismatched_shapes_listing_every_problem(tmp_path):
    x = _adapter(tmp_path / "x.gguf", tensors={Q: (4, 64, 64)})
    y = _adapter(tmp_path / "y.gguf", tensors={Q: (4, 32, 64)})
    z = _adapter(tmp_path / "z.gguf", "qwen2")
    with pytest.raises(IncompatibleAdapterError) as err:
        combine([x, y, z, tmp_path / "missing.gguf"], tmp_path / "o.gguf")
    text = str(err.value)
    assert "different base weight shapes" in text and "(64, 64)" in text and "(32, 64)" in text
    assert "different architectures" in text and "missing.gguf: file not found" in text
    assert len(err.value.problems) == 3
    assert not (tmp_path / "o.gguf").exists()


def test_a_missing_file_alone_keeps_its_type(tmp_path):
    x = _adapter(tmp_path / "x.gguf")
    with pytest.raises(GGUFFileError, match="not found"):
        combine([x, tmp_path / "nope.gguf"], tmp_path / "o.gguf")


def test_existing_output_needs_force(tmp_path, capsys):
    x, y = _adapter(tmp_path / "x.gguf", seed=1), _adapter(tmp_path / "y.gguf", seed=2)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="--force"):
        combine([x, y], out)
    assert cli(["combine", str(x), str(y), "-o", str(out), "-q"]) == 2
    assert out.read_bytes() == b"old"
    assert cli(["combine", str(x), str(y), "-o", str(out), "-q", "--force"]) == 0
    assert read_gguf(out).is_adapter


def test_output_equal_to_an_input_is_refused_even_with_force(tmp_path):
    x, y = _adapter(tmp_path / "x.gguf", seed=1), _adapter(tmp_path / "y.gguf", seed=2)
    before = x.read_bytes()
    with pytest.raises(OutputExistsError, match="is one of the inputs"):
        combine([x, y], x, overwrite=True)
    assert x.read_bytes() == before


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="svd"), "svd needs a rank"),
    (dict(method="svd", rank=0), "positive integer"),
    (dict(method="svd", rank=-2), "positive integer"),
    (dict(method="cat", rank=4), "--rank is for svd"),
    (dict(method="tucker"), "unknown method"),
    (dict(outtype="q4_0"), "unknown outtype"),
])
def test_bad_requests_are_refused(tmp_path, kwargs, match):
    x = _adapter(tmp_path / "x.gguf")
    with pytest.raises(InvalidRequestError, match=match):
        combine([x], tmp_path / "o.gguf", **kwargs)
    assert not (tmp_path / "o.gguf").exists()


def test_bad_scales_and_cli_exit_codes(tmp_path, capsys):
    x = _adapter(tmp_path / "x.gguf")
    with pytest.raises(InvalidRequestError, match="not a finite number"):
        combine([(x, float("inf"))], tmp_path / "o.gguf")
    with pytest.raises(InvalidRequestError, match="no adapters"):
        combine([], tmp_path / "o.gguf")
    with pytest.raises(InvalidRequestError, match="no output file"):
        combine([x], None)
    assert cli(["combine", f"{x}:nan", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "not a finite number" in capsys.readouterr().err
    assert cli(["combine", str(x), "--method", "svd", "-o", str(tmp_path / "o.gguf")]) == 2
    assert "svd needs a rank" in capsys.readouterr().err
    with pytest.raises(InvalidRequestError, match="too large"):
        combine([(x, 1e6)], tmp_path / "o.gguf")  # folded into B, beyond the f16 range
    assert not (tmp_path / "o.gguf").exists()


def test_dry_run_writes_nothing(tmp_path, capsys):
    x, y = _adapter(tmp_path / "x.gguf", seed=1), _adapter(tmp_path / "y.gguf", seed=2)
    out = tmp_path / "o.gguf"
    res = combine([x, (y, -1.0)], out, method="svd", rank=5, dry_run=True)
    assert res.out_path is None and not out.exists()
    assert res.tensors[0].rank == 5 and 0 < res.worst.rel_error < 1
    assert cli(["combine", str(x), f"{y}:-1", "--method", "svd", "--rank", "5", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] is None and report["worst"]["name"] == Q
    assert report["tensors"][0]["rank_in"] == 8 and report["tensors"][0]["rank"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf", "y.gguf"]


def test_cli_report_lists_each_tensor_error(tmp_path, capsys):
    x = _adapter(tmp_path / "x.gguf", tensors={Q: (4, 64, 64), "blk.0.attn_v.weight": (4, 16, 64)}, seed=1)
    y = _adapter(tmp_path / "y.gguf", tensors={Q: (4, 64, 64)}, seed=2)
    assert cli(["combine", str(x), f"{y}:0.5", "--method", "svd", "--rank", "6", "-o", str(tmp_path / "o.gguf")]) == 0
    text = capsys.readouterr().out
    assert f"{Q}      8->6  " in text and "blk.0.attn_v.weight      4->4  0.000e+00" in text
    assert "worst relative error" in text and f"({Q})" in text
