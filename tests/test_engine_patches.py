"""edge-lora's patches to the pinned llama.cpp (cmake/patches/), checked in the built engine.

0003 (ggml-cpu: the leftovers of the f16 and f32 dot products as whole vectors): ggml's
matrix-vector product of every dot length from 1 to 80, f16 and f32 weights, against float64
(tests/ggml_dot.py), on this CPU's ggml variant and, where qemu-user is installed, on an emulated
Haswell (AVX2: 8-wide vectors) and Nehalem (SSE4.2: 4-wide): the lengths below, at and past a
whole step land in each of the three loops. Tolerance: 1e-6 of sum(|w| |x|) per row (float32
accumulation of at most 80 products is about 1e-7). 0001 is tested by tests/test_mix_adapters.py.

0004 (ggml-cpu: a LoRA pair's four nodes as one for up to 8 tokens): the pattern against float64
on exact inputs (tests/ggml_dot.py), same tolerance, on the same CPUs and at 1 to 16 threads,
fused exactly where it should be (1-8 tokens, single-use intermediates, no output flag) and
nowhere else, and bit for bit equal to the unfused nodes for one token on random inputs. The runtime's outputs
against PEFT (tests/test_runtime*.py, test_mix_adapters.py) run through it on every decode.

0007 (ggml-cpu: the fused pair's f16 B rows eight at a time on AVX2): the same float64 cases
(ranks 8, 16, 32 and 64 take it here and under qemu Haswell, not under Nehalem), and on random
inputs within 1e-6 of the terms' size of the unfused nodes (the same products, summed in another order).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from emulated import QEMU, emulated

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6


def _dot_errors(wrapper: list[str], cpu_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **(cpu_env or {}),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([*wrapper, sys.executable, str(ROOT / "tests" / "ggml_dot.py")], capture_output=True,
                          text=True, timeout=900, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(out: dict) -> None:
    assert out["lengths"] == 80
    assert out["worst"]["f16"] <= TOLERANCE and out["worst"]["f32"] <= TOLERANCE, out
    assert out["lora"]["cases"] > 100 and out["lora"]["worst"] <= TOLERANCE, out["lora"]
    assert out["lora"]["wrong_fusion"] == [], out["lora"]["wrong_fusion"]


def test_dot_products_and_lora_pairs_match_float64():
    _check(_dot_errors([]))


def test_lora_pairs_unfused_match_too():
    """GGML_CPU_DISABLE_FUSION=1: the four nodes one by one give the same results, every case the
    fused path takes is reported as unfused (the NaN check sees the difference), and one token's
    outputs on random inputs are the same bits as the fused node's."""
    fused = _dot_errors([])
    os.environ["GGML_CPU_DISABLE_FUSION"] = "1"
    try:
        out = _dot_errors([])
    finally:
        del os.environ["GGML_CPU_DISABLE_FUSION"]
    assert out["lora"]["worst"] <= TOLERANCE, out["lora"]
    assert out["lora"]["fusable"] > 100 and len(out["lora"]["wrong_fusion"]) == out["lora"]["fusable"], out["lora"]
    assert out["lora"]["digest"] == fused["lora"]["digest"]
    # 0007's rows (f16 B, rank a multiple of 8): the same sums in another order
    assert out["lora"]["random"].keys() == fused["lora"]["random"].keys() and len(fused["lora"]["random"]) == 8
    worst = 0.0
    for label, (got, bound) in fused["lora"]["random"].items():
        want = np.array(out["lora"]["random"][label][0])
        worst = max(worst, float(np.max(np.abs(np.array(got) - want) / np.array(bound))))
    assert worst <= TOLERANCE, worst


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 only")
@pytest.mark.parametrize("cpu, variant", [("Haswell", "haswell"), ("Nehalem", "sse42")])
def test_dot_products_on_emulated_older_cpus(cpu, variant):
    if QEMU is None:
        if os.environ.get("EDGE_LORA_REQUIRE_QEMU") == "1":
            pytest.fail("qemu-x86_64 is required (EDGE_LORA_REQUIRE_QEMU=1): apt-get install qemu-user")
        pytest.skip("qemu-x86_64 not installed (Debian: apt-get install qemu-user)")
    out = _dot_errors(*emulated(cpu))
    assert out["cpu_variant"] == variant, out
    _check(out)
