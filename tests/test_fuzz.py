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
