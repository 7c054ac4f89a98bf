"""A bounded, seeded fuzz campaign in the suite (``make fuzz`` runs a large one): mutated GGUF
adapters and bases through the runtime, each in a worker process. No crash, no untyped
exception, no non-finite numbers returned."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_gguf import campaign  # noqa: E402

N_ADAPTERS, N_BASES, SEED = 3000, 300, 20261129


def test_fuzz_campaign(tmp_path):
    counts, failures = campaign(N_ADAPTERS, N_BASES, SEED, tmp_path)
    assert sum(counts["adapters"].values()) == N_ADAPTERS and sum(counts["bases"].values()) == N_BASES
    assert not failures, "\n".join(f"{f['outcome']}: {f['mutation']}: {f.get('error', '')}" for f in failures)
    # the campaign exercised every path: refusals, acceptances and stopped generations
    for c in counts.values():
        assert c["refused"] > 0 and c["accepted"] > 0


def test_values_retyped_keeping_their_value_are_typed_refusals(tmp_path):
    """The mutation third-party writers make: a metadata value stored as another numeric type with
    the same value (alpha 16 as UINT32 or FLOAT64, aLoRA tokens as INT32, a base's block count as
    INT8). llama.cpp's typed getters would abort or throw: each is a typed refusal, never a crash."""
    import random

    from fuzz_gguf import layout, retype, run_cases, seeds

    s = seeds(tmp_path)
    for kind, seed, n in (("adapter", "adapter_alora", 40), ("base", "base", 24)):
        buf = s[seed].read_bytes()
        lay, rng = layout(buf), random.Random(7)
        cases = []
        for i in range(n):
            data, what = retype(buf, rng, lay)
            assert what.startswith("retype") and layout(data).data_start % lay.align == 0
            (tmp_path / f"{kind}-{i}.gguf").write_bytes(data)
            cases.append((tmp_path / f"{kind}-{i}.gguf", what))
        res = run_cases(kind, s["base"], cases)
        assert [r["outcome"] for r in res] == ["refused"] * n, [r for r in res if r["outcome"] != "refused"]
        if kind == "adapter":
            keys = {r["mutation"].split()[1] for r in res}
            assert keys == {"adapter.lora.alpha", "adapter.alora.invocation_tokens"}
