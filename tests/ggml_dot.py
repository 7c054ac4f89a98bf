"""ggml's CPU matrix-vector product (the decode path of a LoRA factor) against float64, run as a
child process (natively, or under qemu's emulated CPUs by tests/test_engine_patches.py).

For every dot length n in 1..LENGTHS and each of f16 and f32 weights: ``ggml_mul_mat`` of a
[rows, n] matrix by one column (llamafile's sgemm needs two or more columns, so one column is
ggml_vec_dot's path: whole steps, cmake/patches/0003's whole vectors, scalar leftovers) on the CPU
backend, compared with numpy in float64 on the same rounded inputs (f16 weights get the column
rounded to f16 too: their vec_dot_type). Prints one JSON line: the variant's worst error relative
to sum(|w| |x|) per row, the lengths checked and the CPU variant that ran.
"""

from __future__ import annotations

import ctypes
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
        (base, "ggml_get_data", [vp], vp),
        (ggml, "ggml_backend_init_by_type", [ctypes.c_int, ctypes.c_char_p], vp),
        (ggml, "ggml_backend_graph_compute", [vp, vp], ctypes.c_int), (ggml, "ggml_backend_free", [vp], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return base, ggml


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


if __name__ == "__main__":
    from edge_lora.engine.probe import cpu_variant, loaded_libraries

    worst = worst_errors()
    print(json.dumps({"worst": worst, "lengths": LENGTHS, "cpu_variant": cpu_variant(loaded_libraries())}))
    sys.stdout.flush()
