"""ggml's CPU matrix-vector product (the decode path of a LoRA factor) and its fused LoRA pair
against float64, run as a child process (natively, or under qemu's emulated CPUs by
tests/test_engine_patches.py).

For every dot length n in 1..LENGTHS and each of f16 and f32 weights: ``ggml_mul_mat`` of a
[rows, n] matrix by one column (llamafile's sgemm needs two or more columns, so one column is
ggml_vec_dot's path: whole steps, cmake/patches/0003's whole vectors, scalar leftovers) on the CPU
backend, compared with numpy in float64 on the same rounded inputs (f16 weights get the column
rounded to f16 too: their vec_dot_type). Prints one JSON line: the variant's worst error relative
to sum(|w| |x|) per row, the lengths checked and the CPU variant that ran.

The LoRA pair (cmake/patches/0004): ``y = res + (s * B (A x) + bias)`` built as llama.cpp's
build_lora_mm builds it (MUL_MAT, MUL_MAT, SCALE, ADD), for f16 and f32 factors, ranks 1..130,
1 to 9 tokens, on inputs that are multiples of 1/2 in [-1, 1] so that every product and sum
before the scale is exact in f16 and f32 (the error left is the final scale and add's float32
rounding), on 1, 3, 4 and 16 threads, ADD's operands either way round. B t's own buffer is
filled with NaN first: the four nodes ran as one exactly when it is still NaN after the
compute, which must be so for 1 to 8 tokens and not for 9, nor when B t has a second use or is
a graph output. One token on random inputs gives a digest of the outputs, which must be the
same with the fusion off (GGML_CPU_DISABLE_FUSION=1): the fused node rounds as the four do;
except where cmake/patches/0007 sums an f16 B's rows eight at a time (rank a multiple of 8, on
AVX2 CPUs), whose outputs come back as they are, with a bound on the size of their terms
(|res| + |s| |B| |A x| + |bias|), to be compared within float32 rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as QT

LENGTHS, ROWS = 80, 7
CPU_DEVICE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _libs():
    from edge_lora.engine import native

    native.backend_init()  # loads the CPU variant for this CPU (a GGML_BACKEND_DL build)
    base = ctypes.CDLL(str(native._lib_file("ggml-base")))
    ggml = ctypes.CDLL(str(native._lib_file("ggml")))
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for lib, name, args, res in (
        (base, "ggml_init", [InitParams], vp), (base, "ggml_free", [vp], None),
        (base, "ggml_new_tensor_2d", [vp, ctypes.c_int, i64, i64], vp), (base, "ggml_mul_mat", [vp, vp, vp], vp),
        (base, "ggml_new_graph", [vp], vp), (base, "ggml_build_forward_expand", [vp, vp], None),
        (base, "ggml_get_data", [vp], vp), (base, "ggml_add", [vp, vp, vp], vp),
        (base, "ggml_scale_bias", [vp, vp, ctypes.c_float, ctypes.c_float], vp), (base, "ggml_set_output", [vp], None),
        (base, "ggml_backend_get_device", [vp], vp), (base, "ggml_backend_dev_backend_reg", [vp], vp),
        (base, "ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
        (ggml, "ggml_backend_init_by_type", [ctypes.c_int, ctypes.c_char_p], vp),
        (ggml, "ggml_backend_graph_compute", [vp, vp], ctypes.c_int), (ggml, "ggml_backend_free", [vp], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return base, ggml


def _set_threads(base, backend, n: int) -> None:
    """The CPU backend's thread count, through its registry (the CPU variant is a loaded module)."""
    reg = base.ggml_backend_dev_backend_reg(base.ggml_backend_get_device(backend))
    fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_set_n_threads")
    assert fn, "the CPU backend has no ggml_backend_set_n_threads"
    ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int)(fn)(backend, n)


def _fill(base, t, arr: np.ndarray) -> None:
    ctypes.memmove(base.ggml_get_data(t), arr.ctypes.data, arr.nbytes)


def worst_errors() -> dict[str, float]:
    base, ggml = _libs()
    backend = ggml.ggml_backend_init_by_type(CPU_DEVICE, None)
    assert backend, "no CPU backend"
    rng = np.random.default_rng(0)
    worst = {"f16": 0.0, "f32": 0.0}
    try:
        for kind, gtype, np_t in (("f16", QT.F16, np.float16), ("f32", QT.F32, np.float32)):
            for n in range(1, LENGTHS + 1):
                w = rng.standard_normal((ROWS, n)).astype(np_t)
                x = rng.standard_normal(n).astype(np.float32)
                ctx = base.ggml_init(InitParams(16 << 20, None, False))
                try:
                    tw = base.ggml_new_tensor_2d(ctx, gtype, n, ROWS)
                    tx = base.ggml_new_tensor_2d(ctx, QT.F32, n, 1)
                    _fill(base, tw, np.ascontiguousarray(w))
                    _fill(base, tx, x)
                    ty = base.ggml_mul_mat(ctx, tw, tx)
                    graph = base.ggml_new_graph(ctx)
                    base.ggml_build_forward_expand(graph, ty)
                    assert ggml.ggml_backend_graph_compute(backend, graph) == 0
                    got = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(ty), ctypes.POINTER(ctypes.c_float)),
                                                shape=(ROWS,)).astype(np.float64)
                finally:
                    base.ggml_free(ctx)
                xr = x.astype(np_t).astype(np.float64)  # f16 weights: the column is rounded to f16 first
                ref = w.astype(np.float64) @ xr
                scale = np.abs(w.astype(np.float64)) @ np.abs(xr)
                worst[kind] = max(worst[kind], float(np.max(np.abs(got - ref) / scale)))
    finally:
        ggml.ggml_backend_free(backend)
    return worst


#: (A type, B type, rank, input dim K, output dim N, tokens T, variant); variants: "" the pattern as
#: llama.cpp builds it, "swapped" ADD(v, res), "second-use" B t used again, "output" B t flagged as
#: a graph output (the last two must not fuse)
LORA_CASES = [(ta, tb, r, k, n, t, "")
              for ta, tb in (("f16", "f16"), ("f32", "f32"), ("f16", "f32"))
              for r in (1, 8, 16, 17, 32, 64, 130) for k, n in ((64, 33), (96, 1)) for t in (1, 2, 8, 9)]
LORA_CASES += [("f16", "f16", 16, 64, 200, 1, v) for v in ("swapped", "second-use", "output")]
#: the CPU backend's thread counts, taken in turn by the cases (1: no barrier; 16: threads without rows)
THREADS = (4, 1, 3, 16)
_TYPES = {"f16": (QT.F16, np.float16), "f32": (QT.F32, np.float32)}


def _fusable(case: tuple) -> bool:
    return case[5] <= 8 and case[6] in ("", "swapped")


def _rows_f16(case: tuple) -> bool:
    """Whether 0007's kernel may sum B's rows (an f16 B whose rank is a multiple of 8): in
    another order than the unfused product, so no digest, the outputs themselves instead."""
    return case[1] == "f16" and case[2] % 8 == 0


def _lora_graph(base, ggml, backend, case: tuple, arrays: dict, s: float, bias: float) -> tuple[np.ndarray, bool]:
    """Build and compute ``case``'s graph on ``arrays``; returns y and whether it ran fused."""
    ta, tb, r, k, n, t, variant = case
    ctx = base.ggml_init(InitParams(16 << 20, None, False))
    try:
        tensors = {}
        for name, kind in (("a", ta), ("b", tb), ("x", "f32"), ("res", "f32")):
            gtype, np_t = _TYPES[kind]
            arr = arrays[name]
            tensors[name] = base.ggml_new_tensor_2d(ctx, gtype, arr.shape[1], arr.shape[0])
            _fill(base, tensors[name], np.ascontiguousarray(arr.astype(np_t)))
        tu = base.ggml_mul_mat(ctx, tensors["b"], base.ggml_mul_mat(ctx, tensors["a"], tensors["x"]))
        tv = base.ggml_scale_bias(ctx, tu, s, bias)
        ty = base.ggml_add(ctx, tv, tensors["res"]) if variant == "swapped" else base.ggml_add(ctx, tensors["res"], tv)
        if variant == "second-use":
            ty = base.ggml_add(ctx, ty, tu)
        if variant == "output":
            base.ggml_set_output(tu)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, ty)
        u_view = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(tu), ctypes.POINTER(ctypes.c_float)), shape=(t, n))
        u_view[:] = np.nan
        assert ggml.ggml_backend_graph_compute(backend, graph) == 0
        got = np.ctypeslib.as_array(ctypes.cast(base.ggml_get_data(ty), ctypes.POINTER(ctypes.c_float)),
                                    shape=(t, n)).copy()
        return got, bool(np.isnan(u_view).all())
    finally:
        base.ggml_free(ctx)


def lora_pairs() -> dict:
    """The LoRA pair's worst error against float64 (relative to |res| + |s| |B| |A| |x| + |bias|) on
    exact inputs, the cases whose fusion was not as expected, and a digest of the outputs on
    random (inexact) inputs for one token: equal with fusion on and off when the fused node
    rounds as the four nodes do."""
    base, ggml = _libs()
    backend = ggml.ggml_backend_init_by_type(CPU_DEVICE, None)
    assert backend, "no CPU backend"
    rng = np.random.default_rng(1)
    worst, wrong_fusion, digest = 0.0, [], hashlib.sha256()
    random: dict[str, tuple[list[float], list[float]]] = {}  # 0007's cases: outputs and a bound of their terms
    halves = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    try:
        for i, case in enumerate(LORA_CASES):
            ta, tb, r, k, n, t, variant = case
            _set_threads(base, backend, THREADS[i % len(THREADS)])
            arrays = dict(zip(("a", "x", "b"), (rng.choice(halves, shape) for shape in ((r, k), (t, k), (n, r)))))
            arrays["res"] = rng.standard_normal((t, n)).astype(np.float32)
            s, bias = float(rng.uniform(-2, 2)), (0.0 if r % 2 else 0.375)
            got, fused = _lora_graph(base, ggml, backend, case, arrays, s, bias)
            a, x, b, res = (arrays[name] for name in ("a", "x", "b", "res"))
            u = (x @ a.T) @ b.T  # exact: every partial sum is a multiple of 1/4 well inside f16's range
            ref = res + (s * u + bias) + (u if variant == "second-use" else 0.0)
            scale = np.abs(res) + abs(s) * ((np.abs(x) @ np.abs(a.T)) @ np.abs(b.T)) + abs(bias) + 1e-30
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref) / scale)))
            if fused != _fusable(case):
                wrong_fusion.append(f"{ta}/{tb} r={r} k={k} n={n} t={t} {variant or 'plain'}: fused={fused}")
            if t == 1 and variant == "":  # the same shapes on random inputs: t rounds to f16, sums are inexact
                arrays = {"a": rng.standard_normal((r, k)), "x": rng.standard_normal((1, k)),
                          "b": rng.standard_normal((n, r)), "res": rng.standard_normal((1, n))}
                got = _lora_graph(base, ggml, backend, case, arrays, s, bias)[0]
                if _rows_f16(case):
                    label = f"{ta}/{tb} r={r} k={k} n={n}"
                    bound = np.abs(arrays["res"]) + abs(s) * np.abs(arrays["b"]) @ np.abs(arrays["a"] @ arrays["x"][0]) + abs(bias)
                    random[label] = (got[0].tolist(), bound[0].tolist())
                else:
                    digest.update(got.tobytes())
    finally:
        ggml.ggml_backend_free(backend)
    return {"worst": worst, "cases": len(LORA_CASES), "wrong_fusion": wrong_fusion,
            "fusable": sum(map(_fusable, LORA_CASES)), "digest": digest.hexdigest(), "random": random}


if __name__ == "__main__":
    from edge_lora.engine.probe import cpu_variant, loaded_libraries

    worst = worst_errors()
    print(json.dumps({"worst": worst, "lengths": LENGTHS, "lora": lora_pairs(),
                      "cpu_variant": cpu_variant(loaded_libraries())}))
    sys.stdout.flush()
