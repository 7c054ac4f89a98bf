"""PEFT ``target_parameters`` LoRA on fused 3-D experts onto llama.cpp's stacked tensors, without
torch: which parameter and which orientation, read from the base's shapes (numpy references)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_lora.families import family_for
from edge_lora_convert.checkpoint import LoraModule, ParamTarget
from edge_lora_convert.expert_params import param_pairs

E, R, HIDDEN = 3, 2, 8
QWEN3MOE = family_for("qwen3moe")


def _base(ff: int) -> dict[str, tuple[int, ...]]:
    return {"blk.0.ffn_gate_exps.weight": (E, ff, HIDDEN), "blk.0.ffn_up_exps.weight": (E, ff, HIDDEN),
            "blk.0.ffn_down_exps.weight": (E, HIDDEN, ff)}


def _module(a: np.ndarray, b: np.ndarray, *names: str, scale: float = 1.0) -> LoraModule:
    return LoraModule("model.layers.0.mlp.experts", "linear", a, b, scale, 1.0, ("x.lora_A.weight", "x.lora_B.weight"),
                      parameters=tuple(ParamTarget(n, R, 1.0, scale) for n in names))


def _peft_delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PEFT's ParamWrapper.get_delta_weight for a swapped (E, out, in) parameter: ``e o i``."""
    return np.einsum("ore,eri->eoi", b.reshape(b.shape[0], R, E), a.reshape(E, R, a.shape[1]))


def test_gate_up_is_split_by_rows_and_the_nesting_read_from_shapes():
    rng = np.random.default_rng(0)
    ff = 5
    a_gu, b_gu = rng.normal(size=(E * R, HIDDEN)), rng.normal(size=(2 * ff, E * R))
    a_d, b_d = rng.normal(size=(E * R, ff)), rng.normal(size=(HIDDEN, E * R))
    problems: list[str] = []
    # both parameters offered to both wrappers, as a nested save's config does
    mods = [_module(a_d, b_d, "down_proj", "gate_up_proj", scale=0.5), _module(a_gu, b_gu, "down_proj", "gate_up_proj")]
    out = param_pairs(mods, QWEN3MOE, 1, alpha=R, base_tensors=_base(ff), problems=problems)  # llama.cpp scale 1
    assert problems == []
    fused = _peft_delta(a_gu, b_gu)
    np.testing.assert_allclose(out["blk.0.ffn_gate_exps.weight"][0].delta(), fused[:, :ff], rtol=1e-5)
    np.testing.assert_allclose(out["blk.0.ffn_up_exps.weight"][0].delta(), fused[:, ff:], rtol=1e-5)
    np.testing.assert_allclose(out["blk.0.ffn_down_exps.weight"][0].delta(), 0.5 * _peft_delta(a_d, b_d), rtol=1e-5)


def test_a_square_expert_weight_is_refused_not_guessed():
    rng = np.random.default_rng(1)
    ff = HIDDEN  # down_proj (E, hidden, ff) is square: lora_A may face its input or its output
    problems: list[str] = []
    mods = [_module(rng.normal(size=(E * R, HIDDEN)), rng.normal(size=(HIDDEN, E * R)), "down_proj")]
    assert param_pairs(mods, QWEN3MOE, 1, alpha=R, base_tensors=_base(ff), problems=problems) == {}
    assert len(problems) == 1 and "square" in problems[0] and "cannot be told" in problems[0]


@pytest.mark.parametrize("base", [None, "dense"])
def test_without_expert_tensors_it_is_refused(base):
    rng = np.random.default_rng(2)
    problems: list[str] = []
    tensors = None if base is None else {"blk.0.ffn_up.weight": (10, HIDDEN)}
    mods = [_module(rng.normal(size=(E * R, HIDDEN)), rng.normal(size=(10, E * R)), "gate_up_proj")]
    assert param_pairs(mods, QWEN3MOE, 1, alpha=R, base_tensors=tensors, problems=problems) == {}
    assert len(problems) == 1
    assert ("pass --base" if base is None else "fits none of the base's expert tensors") in problems[0]


@pytest.mark.parametrize("faces_input", [True, False])
def test_a_square_weight_takes_the_orientation_the_other_parameter_shows(faces_input):
    """gpt-oss-20b: down_proj is square (hidden = ff = 2880), gate_up_proj is not."""
    rng = np.random.default_rng(3)
    ff = HIDDEN
    a_gu, b_gu = rng.normal(size=(E * R, HIDDEN)), rng.normal(size=(2 * ff, E * R))
    a_d, b_d = rng.normal(size=(E * R, ff)), rng.normal(size=(HIDDEN, E * R))
    if not faces_input:  # older PEFT: lora_A faces the parameter's first axis (the output of (E, out, in))
        a_gu, b_gu = rng.normal(size=(E * R, 2 * ff)), rng.normal(size=(HIDDEN, E * R))
    problems: list[str] = []
    mods = [_module(a_gu, b_gu, "gate_up_proj"), _module(a_d, b_d, "down_proj")]
    out = param_pairs(mods, QWEN3MOE, 1, alpha=R, base_tensors=_base(ff), problems=problems)
    assert problems == []
    down = _peft_delta(a_d, b_d)  # (E, y, x) as B_e A_e
    want = down if faces_input else np.swapaxes(down, 1, 2)
    np.testing.assert_allclose(out["blk.0.ffn_down_exps.weight"][0].delta(), want, rtol=1e-5)
