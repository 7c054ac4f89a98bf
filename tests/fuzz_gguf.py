"""Seeded fuzzing of GGUF adapters and bases through the runtime, each case in a worker process.

A case is a valid file mutated once or a few times, structure-aware: header counts and
version, metadata value types and values (NaN, infinities, huge, zero, negative), a value
retyped keeping its value (an alpha of 8 as UINT32 or FLOAT64, a token array as INT32), string and
array lengths, tensor dimensions, types and offsets, tensor data (NaN/Inf, huge, random
bytes), truncation, and plain byte flips. A worker process loads each case (adapters:
``Runtime.load_adapter`` then a short greedy completion and ``logits``; bases: ``Runtime``
then a short completion) and reports one JSON line per case, so a native abort ends only the
worker: the parent records the case as a crash and starts a new worker.

Outcomes: ``refused`` (a typed EdgeLoraError), ``stopped`` (accepted, then generation stopped
with NonFiniteLogitsError), ``accepted`` (finite output), ``untyped`` (another exception),
``crash`` (the worker died), ``nonfinite`` (accepted and non-finite numbers came back: must
never happen). ``python tests/fuzz_gguf.py --adapters 3000 --bases 300`` (``make fuzz``) runs a
campaign and prints the counts; tests/test_fuzz.py runs a bounded one in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
F32, STRING, ARRAY = 6, 8, 9


@dataclass
class Field:
    key: str
    type_pos: int  # offset of the value-type u32
    value_pos: int
    vtype: int
    size: int  # bytes of the value (a string: its length field + bytes)


@dataclass
class TInfo:
    name: str
    ndims_pos: int
    dims_pos: int
    n_dims: int
    type_pos: int
    offset_pos: int
    offset: int
    ggml_type: int


@dataclass
class Layout:
    n_tensors_pos: int
    n_kv_pos: int
    fields: list[Field]
    tensors: list[TInfo]
    data_start: int
    header_end: int = 0  # where the tensor infos end (padding to the alignment follows)
    align: int = 32


def layout(buf: bytes) -> Layout:
    """Where everything is in a valid GGUF file (v3)."""
    pos = 8

    def u32() -> int:
        nonlocal pos
        v = struct.unpack_from("<I", buf, pos)[0]
        pos += 4
        return v

    def u64() -> int:
        nonlocal pos
        v = struct.unpack_from("<Q", buf, pos)[0]
        pos += 8
        return v

    def string() -> str:
        nonlocal pos
        n = u64()
        s = buf[pos : pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def skip_value(vt: int) -> None:
        nonlocal pos
        if vt == STRING:
            string()
        elif vt == ARRAY:
            et, count = u32(), u64()
            for _ in range(count):
                skip_value(et)
        else:
            pos += _SCALAR_SIZES[vt]

    n_tensors_pos = pos
    n_tensors = u64()
    n_kv_pos = pos
    n_kv = u64()
    fields = []
    align = 32
    for _ in range(n_kv):
        key = string()
        type_pos = pos
        vt = u32()
        value_pos = pos
        skip_value(vt)
        fields.append(Field(key, type_pos, value_pos, vt, pos - value_pos))
        if key == "general.alignment":
            align = struct.unpack_from("<I", buf, value_pos)[0]
    tensors = []
    for _ in range(n_tensors):
        name = string()
        ndims_pos = pos
        n_dims = u32()
        dims_pos = pos
        pos += 8 * n_dims
        type_pos = pos
        ggml_type = u32()
        offset_pos = pos
        offset = u64()
        tensors.append(TInfo(name, ndims_pos, dims_pos, n_dims, type_pos, offset_pos, offset, ggml_type))
    data_start = (pos + align - 1) // align * align
    return Layout(n_tensors_pos, n_kv_pos, fields, tensors, data_start, pos, align)


#: the numeric GGUF value types and their struct formats
_NUMERIC = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 10: "Q", 11: "q", 12: "d"}


def _holds(vtype: int, v: float | int) -> bool:
    """Whether GGUF type ``vtype`` stores ``v`` exactly."""
    fmt = _NUMERIC[vtype]
    if fmt in "fd":
        return float(struct.unpack("<" + fmt, struct.pack("<" + fmt, float(v)))[0]) == v
    if isinstance(v, float) and not v.is_integer():
        return False
    bits = struct.calcsize(fmt) * 8
    lo, hi = (0, 2**bits - 1) if fmt.isupper() else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return lo <= int(v) <= hi


def retype(buf: bytes, rng: random.Random, lay: Layout) -> tuple[bytes, str]:
    """A metadata value stored as another numeric type holding the same value (an alpha of 8 as
    UINT32 or FLOAT64, a UINT32 token array as INT32: what third-party writers do); the header is
    re-laid and the data section copied after it, aligned as before."""
    cands = []
    for f in lay.fields:
        if f.vtype in _NUMERIC:
            cands.append((f, None))
        elif f.vtype == ARRAY:
            et = struct.unpack_from("<I", buf, f.value_pos)[0]
            if et in _NUMERIC:
                cands.append((f, et))
    if not cands:
        return buf, "noop"
    f, et = rng.choice(cands)
    if et is None:
        (value,) = struct.unpack_from("<" + _NUMERIC[f.vtype], buf, f.value_pos)
        if isinstance(value, float) and not math.isfinite(value):
            return buf, "noop"  # an earlier mutation made it NaN or infinite: no value to keep
        others = [t for t in _NUMERIC if t != f.vtype and _holds(t, value)]
        if not others:
            return buf, "noop"
        t = rng.choice(others)
        new = struct.pack("<I", t) + struct.pack("<" + _NUMERIC[t], value if _NUMERIC[t] in "fd" else int(value))
        what = f"retype {f.key} {_NUMERIC[f.vtype]}->{_NUMERIC[t]}"
    else:
        count = struct.unpack_from("<Q", buf, f.value_pos + 4)[0]
        if 12 + count * struct.calcsize(_NUMERIC[et]) != f.size:
            return buf, "noop"  # an earlier mutation of this case changed the array's length
        values = struct.unpack_from(f"<{count}{_NUMERIC[et]}", buf, f.value_pos + 12)
        others = [t for t in _NUMERIC if t != et and all(_holds(t, v) for v in values)]
        if not others:
            return buf, "noop"
        t = rng.choice(others)
        fmt = _NUMERIC[t]
        new = struct.pack("<IIQ", ARRAY, t, count) + struct.pack(f"<{count}{fmt}", *(
            float(v) if fmt in "fd" else int(v) for v in values))
        what = f"retype {f.key} array of {_NUMERIC[et]}->{fmt}"
    header = buf[: f.type_pos] + new + buf[f.value_pos + f.size : lay.header_end]
    header += bytes(-len(header) % lay.align)
    return header + buf[lay.data_start :], what


_NASTY_F32 = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.0, -1.0, 1e-30, 3.4e38]
_NASTY_INT = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 7, 65536]


def mutate(buf: bytes, rng: random.Random, lay: Layout) -> tuple[bytes, str]:
    """One structure-aware mutation; returns the new bytes and what was done."""
    b = bytearray(buf)
    kind = rng.choice(["count", "version", "vtype", "value", "value", "alpha", "strlen", "ndims", "dim", "dim",
                       "ttype", "toffset", "data_nan", "data_big", "data_bytes", "truncate", "flip", "retype", "retype"])
    if kind == "retype":
        return retype(buf, rng, lay)
    if kind == "count":
        pos = rng.choice([lay.n_tensors_pos, lay.n_kv_pos])
        struct.pack_into("<Q", b, pos, rng.choice(_NASTY_INT))
        return bytes(b), f"count@{pos}"
    if kind == "version":
        struct.pack_into("<I", b, 4, rng.choice([0, 1, 2, 4, 2**31]))
        return bytes(b), "version"
    if kind in ("vtype", "value", "strlen", "alpha"):
        fields = lay.fields
        if kind == "alpha":
            fields = [f for f in fields if f.key.endswith("lora.alpha")] or fields
        if kind == "strlen":
            fields = [f for f in fields if f.vtype in (STRING, ARRAY)] or fields
        f = rng.choice(fields)
        if kind == "vtype":
            struct.pack_into("<I", b, f.type_pos, rng.choice([0, 6, 8, 9, 12, 13, 255, 2**31]))
            return bytes(b), f"vtype {f.key}"
        if kind == "strlen" and f.vtype in (STRING, ARRAY):
            pos = f.value_pos + (4 if f.vtype == ARRAY else 0)
            struct.pack_into("<Q", b, pos, rng.choice([0, 2**40, 2**63, len(buf)]))
            return bytes(b), f"length {f.key}"
        if f.vtype == F32:
            struct.pack_into("<f", b, f.value_pos, rng.choice(_NASTY_F32))
        elif f.vtype in _SCALAR_SIZES:
            size = _SCALAR_SIZES[f.vtype]
            v = rng.choice(_NASTY_INT) % (1 << (8 * size))
            b[f.value_pos : f.value_pos + size] = v.to_bytes(size, "little")
        else:
            b[f.value_pos + rng.randrange(max(f.size, 1))] ^= 1 << rng.randrange(8)
        return bytes(b), f"value {f.key}"
    if kind in ("ndims", "dim", "ttype", "toffset") and lay.tensors:
        t = rng.choice(lay.tensors)
        if kind == "ndims":
            struct.pack_into("<I", b, t.ndims_pos, rng.choice([0, 3, 5, 9, 2**31]))
        elif kind == "dim" and t.n_dims:
            struct.pack_into("<Q", b, t.dims_pos + 8 * rng.randrange(t.n_dims), rng.choice(_NASTY_INT + [3, 5, 31, 33]))
        elif kind == "ttype":
            struct.pack_into("<I", b, t.type_pos, rng.choice([0, 1, 2, 8, 10, 12, 14, 30, 39, 40, 1000]))
        else:
            struct.pack_into("<Q", b, t.offset_pos, rng.choice([1, 3, t.offset + 32, 2**40, 2**63]))
        return bytes(b), f"{kind} {t.name}"
    if kind in ("data_nan", "data_big", "data_bytes") and lay.tensors and len(buf) > lay.data_start:
        t = rng.choice(lay.tensors)
        start = lay.data_start + t.offset
        end = min(len(buf), start + max(4, (lay.tensors[lay.tensors.index(t) + 1].offset - t.offset)
                                        if lay.tensors.index(t) + 1 < len(lay.tensors) else len(buf) - start))
        if end - start < 4:
            return bytes(b), "noop"
        pos = start + rng.randrange(0, (end - start) // 2) * 2
        if kind == "data_nan":
            val = rng.choice([b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\xff\x7f"]) if t.ggml_type in (1, 8, 30) else \
                rng.choice([struct.pack("<f", float("nan")), struct.pack("<f", float("inf"))])
        elif kind == "data_big":
            val = b"\xff\x7b" if t.ggml_type in (1, 8) else (b"\x7f\x47" if t.ggml_type == 30 else struct.pack("<f", 1e20))
        else:
            val = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 8, 64])))
        b[pos : pos + len(val)] = val[: len(b) - pos]
        return bytes(b), f"{kind} {t.name}"
    if kind == "truncate":
        n = rng.randrange(8, len(buf))
        return bytes(b[:n]), f"truncate {n}"
    for _ in range(rng.choice([1, 2, 4, 16])):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b), "flip"


def make_cases(seed_file: Path, out_dir: Path, n: int, seed: int, prefix: str) -> list[tuple[Path, str]]:
    buf = seed_file.read_bytes()
    lay = layout(buf)
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        data, what = buf, []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            data, w = mutate(data, rng, lay)
            what.append(w)
            if len(data) != len(buf):  # truncated or re-laid: the layout's positions no longer hold
                break
        path = out_dir / f"{prefix}-{i:05d}.gguf"
        path.write_bytes(data)
        cases.append((path, "; ".join(what)))
    return cases


# --- the worker -----------------------------------------------------------------------------


PROMPT = "tok1 tok2"


def worker(kind: str, base: str) -> None:
    import numpy as np

    from edge_lora import EdgeLoraError, NonFiniteLogitsError, Runtime

    rt = Runtime(base, n_ctx=64) if kind == "adapter" else None
    for line in sys.stdin:
        path = line.strip()
        print(json.dumps({"case": path, "start": True}), flush=True)
        out = {"case": path}
        try:
            if kind == "adapter":
                rt.load_adapter("fz", path)
                try:
                    c = rt.complete(PROMPT, {"fz": 1.0}, max_tokens=3, temperature=0.0)
                    logits = rt.logits([300, 301, 302, *rt.adapters["fz"].invocation_tokens], {"fz": 1.0})
                    out["outcome"] = "accepted" if np.isfinite(logits).all() else "nonfinite"
                    out["text"] = c.text
                except NonFiniteLogitsError:
                    out["outcome"] = "stopped"
                finally:
                    rt.unload_adapter("fz")
            else:
                with Runtime(path, n_ctx=64) as b:
                    try:
                        c = b.complete("a", max_tokens=2, temperature=0.0)
                        out["outcome"] = "accepted"
                        out["text"] = c.text
                    except NonFiniteLogitsError:
                        out["outcome"] = "stopped"
        except EdgeLoraError as e:
            out["outcome"] = "refused"
            out["error"] = type(e).__name__
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
            out["outcome"] = "untyped"
            out["error"] = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(out), flush=True)


def run_cases(kind: str, base: Path, cases: list[tuple[Path, str]], timeout: float = 120.0) -> list[dict]:
    """Feed ``cases`` to worker processes; a worker that dies on a case, or spends ``timeout``
    seconds on one, makes it a crash (or hang) and a new worker takes the rest."""
    import queue
    import threading

    results: list[dict] = []
    todo = list(cases)
    what = {str(p): w for p, w in cases}
    while todo:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--base", str(base)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdin and proc.stdout and proc.stderr
        lines: queue.Queue[str | None] = queue.Queue()
        err_tail: list[str] = []
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        threading.Thread(target=lambda: [err_tail.append(x) for x in proc.stderr], daemon=True).start()

        def feed(paths: list[str], stdin=proc.stdin) -> None:  # a thread: the pipe holds 64 KiB
            try:
                stdin.write("".join(f"{p}\n" for p in paths))
                stdin.close()
            except (BrokenPipeError, OSError):
                pass  # the worker died; its case is recorded below

        threading.Thread(target=feed, args=([str(p) for p, _ in todo],), daemon=True).start()
        current, hung = None, False
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                hung = True
                proc.kill()
                break
            if line is None:
                break
            msg = json.loads(line)
            if msg.get("start"):
                current = msg["case"]
                continue
            msg["mutation"] = what[msg["case"]]
            results.append(msg)
            current = None
            todo.pop(0)
        proc.wait(timeout=60)
        if current is not None:
            results.append({"case": current, "outcome": "crash", "mutation": what[current],
                            "error": ("hung" if hung else f"status {proc.returncode}") + ": " + "".join(err_tail)[-600:]})
            todo.pop(0)
        elif todo:
            raise RuntimeError(f"the worker failed before a case: {''.join(err_tail)[-2000:]}")
    return results


def seeds(tmp: Path) -> dict[str, Path]:
    """Seed files: tiny llama bases (f32 and Q8_0) and f32/f16 adapters for them, one an aLoRA."""
    from gguf import GGMLQuantizationType as QT

    from edge_lora.engine import tiny

    from edge_lora import Runtime

    model = tiny.write_base(tmp / "base.gguf", QT.F32)
    tiny.write_base(tmp / "base-q8.gguf", QT.Q8_0)
    tiny.write_adapter(tmp / "adapter-f32.gguf", model)
    tiny.write_adapter(tmp / "adapter-f16.gguf", model, storage=QT.F16)
    with Runtime(tmp / "base.gguf", n_ctx=64) as rt:  # an aLoRA invoked by the worker's prompt's last 2 tokens
        invocation = rt.tokenize(PROMPT, add_bos=False)[-2:]
    tiny.write_adapter(tmp / "adapter-alora.gguf", model, invocation_tokens=invocation)
    return {"base": tmp / "base.gguf", "base_q8": tmp / "base-q8.gguf", "adapter_f32": tmp / "adapter-f32.gguf",
            "adapter_f16": tmp / "adapter-f16.gguf", "adapter_alora": tmp / "adapter-alora.gguf"}


def campaign(n_adapters: int, n_bases: int, seed: int, tmp: Path) -> tuple[dict[str, Counter], list[dict]]:
    """Run ``n_adapters`` adapter cases and ``n_bases`` base cases; returns outcome counts and failures."""
    s = seeds(tmp)
    counts: dict[str, Counter] = {}
    failures: list[dict] = []
    for label, n, parts in (("adapters", n_adapters, [("adapter_f32", "af32"), ("adapter_f16", "af16"),
                                                      ("adapter_alora", "aal")]),
                            ("bases", n_bases, [("base", "bf32"), ("base_q8", "bq8")])):
        if not n:
            continue
        cases = []
        for i, (src, prefix) in enumerate(parts):
            share = n // len(parts) + (1 if i < n % len(parts) else 0)
            cases += make_cases(s[src], tmp, share, seed * 1000 + i, prefix)
        res = run_cases("adapter" if label == "adapters" else "base", s["base"], cases)
        counts[label] = Counter(r["outcome"] for r in res)
        failures += [r for r in res if r["outcome"] in ("untyped", "crash", "nonfinite")]
    return counts, failures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--adapters", type=int, default=3000)
    p.add_argument("--bases", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", type=Path, help="copy failing inputs here")
    p.add_argument("--worker", choices=["adapter", "base"], help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.base)
        return
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edge-lora-fuzz-") as tmp:
        out, failures = campaign(args.adapters, args.bases, args.seed, Path(tmp))
        if args.keep and failures:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in failures:
                Path(f["case"]).replace(args.keep / Path(f["case"]).name)
    print(f"fuzz campaign, seed {args.seed}, {time.time() - t0:.0f} s")
    for what, counts in out.items():
        print(f"  {what}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  crashes, untyped errors, non-finite acceptances: {len(failures)}")
    for f in failures:
        print(f"    {f['outcome']}: {f['mutation']}: {f.get('error', '')}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
