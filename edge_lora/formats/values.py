"""Find NaN, infinite and overflowing values in a GGUF adapter's tensors, from the bits.

A float is non-finite when its exponent bits are all ones (IEEE 754): f32 ``0x7F800000``,
f16 ``0x7C00``, bf16 ``0x7F80``. A LoRA factor beyond the f16 range (|x| > 65504) is no
trained value either, and overflows llama.cpp's f16 paths (the KV cache, f16 matmuls):
counted separately. Block-quantized types hold f16 scales (ggml's ``ggml-common.h`` block
layouts); Q8_0 (the converter's quantized output) is read by its scales, other types are
dequantized with gguf-py. Cost: one pass over the data (README gives the figures).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

from .._validate import F16_MAX
from .gguf_file import GGUFInfo, TensorInfo

#: storage type -> (bits dtype, exponent mask, bits of |x| above which |x| > F16_MAX or None)
_EXP = {QT.F32: (np.uint32, 0x7F800000, 0x477FE000), QT.F16: (np.uint16, 0x7C00, None),
        QT.BF16: (np.uint16, 0x7F80, 0x477F)}
#: bytes per Q8_0 block: an f16 scale then 32 int8 values
_Q8_0_BLOCK = 34
_CHUNK = 1 << 24  # elements per pass: bounded memory on large tensors
#: storage types llama.cpp cannot multiply with (integers, f64) or that exist only as activations
UNUSABLE_TYPES = frozenset({QT.I8, QT.I16, QT.I32, QT.I64, QT.F64, QT.Q8_1, QT.Q8_K})


def _count_bits(raw: np.ndarray, mask: int, large: int | None) -> tuple[int, int]:
    """(non-finite, finite beyond F16_MAX) among IEEE values given as their bits."""
    bad = big = 0
    sign_off = np.array(mask | (mask >> 1) | ((1 << (raw.dtype.itemsize * 8 - 1)) - 1), dtype=raw.dtype)
    for i in range(0, raw.size, _CHUNK):
        part = raw[i : i + _CHUNK]
        bad += int(np.count_nonzero((part & mask) == mask))
        if large is not None:
            big += int(np.count_nonzero((part & sign_off) > large))
    return bad, (big - bad) if large is not None else 0


def value_problems(data: np.ndarray, t: TensorInfo) -> tuple[int, int]:
    """``(non-finite, beyond ±65504)`` value counts of tensor ``t`` (its raw bytes ``data``)."""
    qtype = QT[t.type_name]
    if qtype in _EXP:
        dtype, mask, large = _EXP[qtype]
        return _count_bits(data.view(dtype), mask, large)
    if qtype == QT.Q8_0:
        scales = data.reshape(-1, _Q8_0_BLOCK)[:, :2].copy().view(np.float16).astype(np.float32)
        finite = np.isfinite(scales)
        return int((~finite).sum()) * 32, int((np.abs(scales[finite]) * 127 > F16_MAX).sum()) * 32
    if qtype in UNUSABLE_TYPES:
        raise ValueError(f"type {qtype.name}")
    values = quants.dequantize(data.reshape(-1, data.size), qtype)
    finite = np.isfinite(values)
    return int(values.size - np.count_nonzero(finite)), int(np.count_nonzero(np.abs(values[finite]) > F16_MAX))


def nonfinite_tensors(info: GGUFInfo) -> list[str]:
    """One problem per tensor of ``info`` holding NaN, infinite or overflowing values (data memory-mapped)."""
    if not info.tensors:
        return []
    mm = np.memmap(info.path, dtype=np.uint8, mode="r")
    problems = []
    try:
        types = {t.type_name for t in info.tensors.values()}
        if len(types) == 1 and QT[next(iter(types))] in _EXP:
            # one float type (the converter's f16/f32/bf16 output): one pass over the data region
            # (GGUF pads between tensors with zeros, which are finite); per tensor only to name them
            start = min(t.offset for t in info.tensors.values())
            end = max(t.offset + t.n_bytes for t in info.tensors.values())
            first = next(iter(info.tensors.values()))
            itemsize = np.dtype(_EXP[QT[first.type_name]][0]).itemsize
            if (end - start) % itemsize == 0 and value_problems(mm[start:end], first) == (0, 0):
                return []
        for t in info.tensors.values():
            if t.n_bytes == 0:
                continue
            try:
                bad, big = value_problems(mm[t.offset : t.offset + t.n_bytes], t)
            except (NotImplementedError, ValueError):
                problems.append(f"tensor {t.name}: stored as {t.type_name}, which llama.cpp cannot use for a LoRA "
                                "factor (use f32, f16, bf16 or a block quantization)")
                continue
            n = int(np.prod(t.shape)) if t.shape else 1
            if bad:
                problems.append(f"tensor {t.name}: {bad} of {n} values are NaN or infinite")
            if big:
                problems.append(f"tensor {t.name}: {big} of {n} values are beyond ±65504 (the f16 range): no trained "
                                "LoRA factor is that large, and llama.cpp's f16 paths would overflow")
    finally:
        del mm
    return problems
