"""The engine probe, run in a child process: what llama.cpp sees, and a smoke test.

    python -m edge_lora.engine.probe [--smoke] [--decode BASE.gguf --n-tokens N]

prints one JSON object on its last stdout line. It runs in a child so that a build that
faults on this CPU (SIGILL) or aborts kills the child, not the caller:
:mod:`edge_lora.engine.check` reads the exit status and the JSON.

The smoke test writes a tiny llama model whose matrices are Q4_0, Q4_K, Q5_K, Q6_K and Q8_0
(:mod:`edge_lora.engine.tiny`) and an f32 LoRA adapter, evaluates a prompt with and without
the adapter, generates a few greedy tokens, and compares with the NumPy reference on the same
dequantized weights; then the same on an f32 copy of the model, where llama.cpp must be
close to exact. Tolerances (relative Frobenius error of the logits): ``QUANT_TOL`` and
``QUANT_DELTA_TOL`` for the quantized model (llama.cpp quantizes activations to Q8 for
quantized matmuls), ``F32_TOL`` for f32 weights (the KV cache is f16); a wrong kernel gives
errors of order 1. Each greedy token must be within ``MARGIN_TOL`` of the reference's best logit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUANT_TOL = 0.05  # measured 1.5e-2 (Q4_K activations are quantized to Q8_K)
QUANT_DELTA_TOL = 0.15  # the adapter's own effect, a difference of two noisy logits: measured 4e-2
F32_TOL = 5e-3  # f32 weights, f16 KV cache: measured 8e-4
MARGIN_TOL = 0.25  # logits have std ~3: a tie within 0.25 may go either way
PROMPT = [300, 271, 265, 290, 303, 265, 312, 280]  # plain tokens of the tiny vocabulary
#: 40 tokens: past llama.cpp's op-offload threshold (batches of 32 tokens and more go to the GPU)
LONG_PROMPT = PROMPT * 5
N_GENERATE = 4
#: one layer of a real model's shape for the offloaded check (a 1B model's width, head_dim 128 as
#: Llama 3 8B, Mistral and Qwen have, TinyLlama's FFN): a GPU backend picks its matmul tiles and
#: attention kernels by shape, and the tiny model's shapes take other ones than a real model's
REAL_SHAPE = dict(n_embd=2048, n_ff=5632, n_head=16, n_head_kv=4, n_layer=1)


def loaded_libraries() -> list[str]:
    """Paths of the llama.cpp/ggml libraries mapped into this process (Linux; else [])."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if "ggml" in line or "llama" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and (".so" in p or ".dylib" in p))


def cpu_variant(libs: list[str]) -> str:
    """The CPU backend in use: the variant name of ``libggml-cpu-<name>.so``, or ``built in``."""
    for p in libs:
        name = Path(p).name
        if name.startswith("libggml-cpu-"):
            return name.removeprefix("libggml-cpu-").split(".so")[0]
    return "built in" if any(Path(p).name.startswith("libggml-cpu") for p in libs) or libs else "unknown"


def _rel(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _logits_check(workdir: Path, label: str, types: Any, tol: float, delta_tol: float, n_threads: int,
                  problems: list[str], generate: int = 0, n_gpu_layers: int = 0,
                  shape: dict[str, int] | None = None) -> tuple[dict[str, float], list[int], list[str]]:
    """Evaluate PROMPT on a tiny base of ``types`` (``shape``: a :class:`tiny.TinyConfig`'s fields) without and with a LoRA adapter against the
    reference; then ``generate`` greedy tokens with the adapter. With ``n_gpu_layers`` (the
    offloaded check) the layers go to the GPU and LONG_PROMPT, past llama.cpp's op-offload batch
    size, is evaluated across adapter-set changes (base, adapter, base), each against the
    reference: where faulting drivers die. Appends to ``problems``."""
    import numpy as np

    from . import tiny
    from .native import ContextParams, NativeAdapter, NativeContext, NativeModel, NativeSampler

    model = tiny.write_base(workdir / f"{label}-base.gguf", types, config=tiny.TinyConfig(**(shape or {})))
    adapter = tiny.write_adapter(workdir / f"{label}-lora.gguf", model)
    nm = NativeModel(str(workdir / f"{label}-base.gguf"), n_gpu_layers=n_gpu_layers)
    na = NativeAdapter(nm, str(workdir / f"{label}-lora.gguf"))
    ctx = NativeContext(nm, ContextParams(n_ctx=64, n_batch=64, n_threads=n_threads))
    generated: list[int] = []
    try:
        base = ctx.decode(PROMPT, 0, all_logits=True)
        ctx.clear()
        ctx.set_adapters([(na, 1.0)])
        with_lora = ctx.decode(PROMPT, 0, all_logits=True)
        ref_base = tiny.reference_logits(model, PROMPT)
        ref_lora = tiny.reference_logits(model, PROMPT, adapter)
        errs = {
            f"{label}_base": (_rel(base, ref_base), tol),
            f"{label}_adapter": (_rel(with_lora, ref_lora), tol),
            f"{label}_adapter_delta": (_rel(with_lora - base, ref_lora - ref_base), delta_tol),
        }
        if generate:
            sampler = NativeSampler(nm).add_greedy()
            tokens = list(PROMPT)
            try:
                for _ in range(generate):
                    tok = sampler.sample(ctx)
                    sampler.accept(tok)
                    ref = tiny.reference_logits(model, tokens, adapter)[-1]
                    if ref[tok] < ref.max() - MARGIN_TOL:
                        problems.append(f"greedy token {len(generated)} is {tok}, the reference's best is "
                                        f"{int(ref.argmax())} (logits {ref[tok]:.3f} vs {ref.max():.3f})")
                    generated.append(int(tok))
                    ctx.decode([tok], len(tokens))
                    tokens.append(tok)
            finally:
                sampler.close()
        if n_gpu_layers:
            for i, with_adapter in enumerate((False, True, False)):  # set changes on long batches
                ctx.clear()
                ctx.set_adapters([(na, 1.0)] if with_adapter else [])
                got = ctx.decode(LONG_PROMPT, 0, all_logits=True)
                want = tiny.reference_logits(model, LONG_PROMPT, adapter if with_adapter else None)
                errs[f"{label}_long_{'adapter' if with_adapter else 'base'}_{i}"] = (_rel(got, want), tol)
        for what, (err, limit) in errs.items():
            if not np.isfinite(err) or err > limit:
                problems.append(f"{what} logits differ from the reference by {err:.3g} (tolerance {limit})")
    finally:
        ctx.close()
        na.close()
        nm.close()
    return {k: v for k, (v, _) in errs.items()}, generated, sorted({t.name for t in model.types.values()})


def smoke_test(workdir: Path, n_threads: int, n_gpu_layers: int = 0) -> dict[str, Any]:
    """Run the smoke test in ``workdir`` (``n_gpu_layers``: offloaded, see :func:`_logits_check`,
    and once more on one layer of REAL_SHAPE);
    returns its figures and ``problems`` (empty when it passed)."""
    from gguf import GGMLQuantizationType

    from . import tiny

    t0 = time.perf_counter()
    problems: list[str] = []
    q_errs, tokens, types = _logits_check(workdir, "quantized", tiny.MIXED_TYPES, QUANT_TOL, QUANT_DELTA_TOL,
                                          n_threads, problems, generate=N_GENERATE, n_gpu_layers=n_gpu_layers)
    f_errs, _, _ = _logits_check(workdir, "f32", GGMLQuantizationType.F32, F32_TOL, F32_TOL, n_threads, problems,
                                 n_gpu_layers=n_gpu_layers)
    r_errs: dict[str, float] = {}
    if n_gpu_layers:  # a real model's shape, where the device's kernels for real models run
        r_errs, _, _ = _logits_check(workdir, "real_shape", tiny.MIXED_TYPES, QUANT_TOL, QUANT_DELTA_TOL, n_threads,
                                     problems, generate=N_GENERATE, n_gpu_layers=n_gpu_layers, shape=REAL_SHAPE)
    return {
        "ok": not problems,
        "problems": problems,
        "logits_rel_err": {**q_errs, **f_errs, **r_errs},
        "tokens": tokens,
        "weight_types": types,
        "n_gpu_layers": n_gpu_layers,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def greedy_decode(base: Path, prompt: list[int] | str, n_tokens: int, n_threads: int) -> list[int]:
    """Greedy tokens after ``prompt`` (token ids, or text tokenized by the model) on ``base``."""
    from .native import ContextParams, NativeContext, NativeModel, NativeSampler

    nm = NativeModel(str(base))
    if isinstance(prompt, str):
        prompt = nm.tokenize(prompt, add_special=True, parse_special=False)
    ctx = NativeContext(nm, ContextParams(n_ctx=128, n_batch=64, n_threads=n_threads))
    sampler = NativeSampler(nm).add_greedy()
    try:
        ctx.decode(prompt, 0)
        out: list[int] = []
        for _ in range(n_tokens):
            tok = sampler.sample(ctx)
            sampler.accept(tok)
            out.append(int(tok))
            ctx.decode([tok], len(prompt) + len(out) - 1)
        return out
    finally:
        sampler.close()
        ctx.close()
        nm.close()


def probe(smoke: bool, decode: Path | None = None, n_tokens: int = 8, n_threads: int | None = None,
          text: str | None = None, offload: bool = False) -> dict[str, Any]:
    """What llama.cpp sees, and the smoke test; ``offload``: offloaded to the GPU device when
    there is one (what a Runtime on this build uses). The devices are printed first, so a
    driver that kills the process is still named."""
    from . import native
    from .offload import offload_devices

    threads = n_threads or min(4, os.cpu_count() or 1)
    native.backend_init()
    seen = native.devices()
    out: dict[str, Any] = {
        "lib_dir": str(native.lib_dir()),
        "backends": native.backends(),
        "devices": [d.__dict__ for d in seen],
        **native.system_info(),
    }
    gpu = offload_devices(seen) if offload else []
    out["offload_device"] = f"{gpu[0].name}: {gpu[0].description}" if gpu else None
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    if smoke:
        with tempfile.TemporaryDirectory(prefix="edge-lora-smoke-") as tmp:
            out["smoke"] = smoke_test(Path(tmp), threads, n_gpu_layers=-1 if gpu else 0)
    if decode is not None:
        out["decode"] = greedy_decode(decode, text if text is not None else PROMPT, n_tokens, threads)
    out["libraries"] = loaded_libraries()
    out["cpu_variant"] = cpu_variant(out["libraries"])
    return out


FROZEN_FLAG = "--edge-lora-probe"


def frozen_dispatch() -> None:
    """In a frozen app (PyInstaller...), the engine check runs the app's own executable with
    ``--edge-lora-probe``: call this first thing in the app's main; it runs the probe and exits
    in that case, and does nothing otherwise."""
    if getattr(sys, "frozen", False) and len(sys.argv) > 1 and sys.argv[1] == FROZEN_FLAG:
        sys.exit(main(sys.argv[2:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_lora.engine.probe")
    p.add_argument("--smoke", action="store_true", help="run the smoke test")
    p.add_argument("--decode", type=Path, help="greedy-decode this GGUF base after a fixed prompt")
    p.add_argument("--n-tokens", type=int, default=8)
    p.add_argument("--text", help="with --decode: this prompt (tokenized by the model) instead of fixed token ids")
    p.add_argument("--threads", type=int)
    p.add_argument("--offload", action="store_true", help="run the smoke test offloaded to the GPU device, if any")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = probe(args.smoke, args.decode, args.n_tokens, args.threads, args.text, args.offload)
    result["probe_seconds"] = round(time.perf_counter() - t0, 3)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result.get("smoke", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
