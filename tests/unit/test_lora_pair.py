"""The LoRA pair's maths against explicit NumPy in float64 (tolerance: float32 rounding, rtol 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_lora.formats.gguf_file import TOKEN_EMBD_TENSOR
from edge_lora.lora.pair import (
    EMBEDDING,
    EXPERTS,
    LINEAR,
    LoraPair,
    concat,
    layout_for,
    pack,
    shape_problem,
    split,
    stack_experts,
)

RNG = np.random.default_rng(0)


def _f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _pair(layout, r=3, scale=0.7):
    if layout == LINEAR:  # W (out=5, in=4)
        return LoraPair(_f32(r, 4), _f32(5, r), scale, LINEAR)
    if layout == EMBEDDING:  # W (vocab=6, hidden=4)
        return LoraPair(_f32(6, r), _f32(4, r), scale, EMBEDDING)
    return LoraPair(_f32(2, r, 4), _f32(2, 5, r), scale, EXPERTS)  # W (E=2, out=5, in=4)


def _explicit(p: LoraPair) -> np.ndarray:
    a, b = p.a.astype(np.float64), p.b.astype(np.float64)
    if p.layout == LINEAR:
        return p.scale * b @ a
    if p.layout == EMBEDDING:
        return p.scale * a @ b.T
    return p.scale * np.stack([b[e] @ a[e] for e in range(a.shape[0])])


def test_layout_is_decided_by_name_and_rank():
    assert layout_for(TOKEN_EMBD_TENSOR) == EMBEDDING
    assert layout_for("blk.0.attn_q.weight") == LINEAR
    assert layout_for("blk.0.ffn_gate_exps.weight", 3) == EXPERTS


@pytest.mark.parametrize("layout", [LINEAR, EMBEDDING, EXPERTS])
def test_delta_shape_and_fit(layout):
    p = _pair(layout)
    d = p.delta()
    assert d.dtype == np.float32 and d.shape == p.weight_shape
    np.testing.assert_allclose(d, _explicit(p), rtol=1e-5, atol=1e-6)
    assert p.fits("w", p.weight_shape) is None
    wrong = tuple(n + 1 for n in p.weight_shape)
    assert "do not fit" in p.fits("w", wrong)


@pytest.mark.parametrize("layout", [LINEAR, EMBEDDING, EXPERTS])
def test_folded_keeps_the_change_with_scale_one(layout):
    p = _pair(layout)
    f = p.folded()
    assert f.scale == 1.0 and np.array_equal(f.a, p.a)
    np.testing.assert_allclose(f.delta(), _explicit(p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", [LINEAR, EMBEDDING, EXPERTS])
def test_concat_is_the_exact_sum(layout):
    ps = [_pair(layout, r=2, scale=0.5), _pair(layout, r=4, scale=-1.5)]
    c = concat(ps)
    assert c.rank == 6 and c.scale == 1.0 and c.layout == layout
    np.testing.assert_allclose(c.delta(), sum(_explicit(p) for p in ps), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [LINEAR, EMBEDDING])
def test_peft_layout_round_trip(layout):
    p = _pair(layout)
    a, b = p.to_peft()
    assert a.shape[0] == p.rank and b.shape[1] == p.rank  # PEFT: A (r, in | vocab), B (out | hidden, r)
    q = LoraPair.from_peft(a, b, layout, scale=p.scale)
    assert np.array_equal(q.a, p.a) and np.array_equal(q.b, p.b) and q.layout == layout


def test_output_rows_move_b_and_the_magnitude():
    p = LoraPair(_f32(3, 4), _f32(5, 3), 1.0, LINEAR, magnitude=np.arange(5, dtype=np.float32))
    rows = np.array([4, 3, 2, 1, 0])
    q = p.with_output_rows(lambda x: x[rows])
    np.testing.assert_array_equal(q.delta(), p.delta()[rows])
    np.testing.assert_array_equal(q.magnitude, p.magnitude[rows])
    with pytest.raises(ValueError):
        _pair(EMBEDDING).with_output_rows(lambda x: x)


def test_shape_problem_names_the_dimensions():
    assert "expected 3-D" in shape_problem("w", EXPERTS, (3, 4), (5, 3), (5, 4))
    assert shape_problem("w", LINEAR, (3, 4), (5, 3), (5, 4)) is None
    assert "do not fit" in shape_problem("w", LINEAR, (3, 4), (5, 2), (5, 4))  # ranks differ
    dora = LoraPair(_f32(3, 4), _f32(5, 3), magnitude=np.ones(4, np.float32))
    assert "DoRA magnitude" in dora.fits("w", (5, 4))


def test_pack_is_the_fused_weights_delta_and_split_undoes_it():
    q, k, v = (LoraPair(_f32(r, 4), _f32(n, r), s, LINEAR) for r, n, s in ((2, 6, 0.5), (3, 2, 1.0), (1, 2, -2.0)))
    fused = pack([q, k, v])
    assert fused.rank == 6 and fused.weight_shape == (10, 4)
    np.testing.assert_allclose(fused.delta(), np.vstack([_explicit(p) for p in (q, k, v)]), rtol=1e-5, atol=1e-6)
    parts = split(fused, [6, 2, 2])
    for part, orig in zip(parts, (q, k, v)):
        np.testing.assert_allclose(part.delta(), _explicit(orig), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        split(fused, [6, 2])


def test_stack_experts_is_each_experts_delta():
    experts = [LoraPair(_f32(2, 4), _f32(5, 2), s, LINEAR) for s in (1.0, 0.25, -1.0)]
    st = stack_experts(experts)
    assert st.layout == EXPERTS and st.a.shape == (3, 2, 4) and st.b.shape == (3, 5, 2) and st.weight_shape == (3, 5, 4)
    np.testing.assert_allclose(st.delta(), np.stack([_explicit(p) for p in experts]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        stack_experts([experts[0], LoraPair(_f32(3, 4), _f32(5, 3))])
