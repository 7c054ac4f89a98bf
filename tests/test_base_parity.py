"""llama.cpp running each tiny GGUF base must reproduce transformers' logits.

This pins down everything the adapter tests build on: the name table, the Q/K
permutation, the base-only transforms and the per-architecture metadata.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tiny_models import CASES, TOKENS, TinyCase, hf_logits, llama_logits, rel_err

#: f32 weights and KV cache; the largest error left is Gemma's GELU, which ggml's CPU
#: backend evaluates through an fp16 lookup table (~3e-4)
BASE_REL_TOL = 1e-3

#: logits must vary across positions, or a broken attention/rope could still match
MIN_POSITION_STD = 0.1


@pytest.mark.parametrize("case", CASES)
def test_base_logits_match_transformers(tiny: Callable[[str], TinyCase], case: str) -> None:
    fixture = tiny(case)
    expected = hf_logits(fixture.model, TOKENS)
    got = llama_logits(fixture.base_path, TOKENS)

    assert got.shape == expected.shape == (len(TOKENS), fixture.model.config.vocab_size)
    err = rel_err(got, expected)
    assert err <= BASE_REL_TOL, f"{case}: relative logit error {err:.2e} > {BASE_REL_TOL:.0e}"
    print(f"parity {case}/base: {err:.3e}")


@pytest.mark.parametrize("case", CASES)
def test_reference_logits_are_not_degenerate(tiny: Callable[[str], TinyCase], case: str) -> None:
    logits = hf_logits(tiny(case).model, TOKENS)

    assert float(logits.std(axis=0).mean()) > MIN_POSITION_STD
    assert len(set(np.argmax(logits, axis=-1).tolist())) > 1
