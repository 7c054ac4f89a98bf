"""Find NaN and infinite values in a GGUF file's tensors, from the bits, without decoding.

A float is non-finite when its exponent bits are all ones (IEEE 754): f32 ``0x7F800000``,
f16 ``0x7C00``, bf16 ``0x7F80``. Block-quantized types hold f16 scales (ggml's
``ggml-common.h`` block layouts); Q8_0 (the converter's quantized output) is read by its
scales, other types are dequantized with gguf-py. Cost: one pass over the data, about
1 GB/s here for f16 (README, "Nothing non-finite is served").
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import quants

from .gguf_file import GGUFInfo, TensorInfo

_EXP = {QT.F32: (np.uint32, 0x7F800000), QT.F16: (np.uint16, 0x7C00), QT.BF16: (np.uint16, 0x7F80)}
#: bytes per Q8_0 block: an f16 scale then 32 int8 values
_Q8_0_BLOCK = 34
_CHUNK = 1 << 24  # elements per pass: bounded memory on large tensors


def _count_bits(raw: np.ndarray, mask: int) -> int:
    bad = 0
    for i in range(0, raw.size, _CHUNK):
        part = raw[i : i + _CHUNK]
        bad += int(np.count_nonzero((part & mask) == mask))
    return bad


def nonfinite_count(data: np.ndarray, t: TensorInfo) -> int:
    """How many values of tensor ``t`` (its raw bytes ``data``) are NaN or infinite."""
    qtype = QT[t.type_name]
    if qtype in _EXP:
        dtype, mask = _EXP[qtype]
        return _count_bits(data.view(dtype), mask)
    if qtype == QT.Q8_0:
        scales = data.reshape(-1, _Q8_0_BLOCK)[:, :2].copy().view(np.uint16)
        return _count_bits(scales, 0x7C00) * 32
    if qtype in (QT.I8, QT.I16, QT.I32, QT.I64):
        return 0
    values = quants.dequantize(data.reshape(-1, data.size), qtype)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def nonfinite_tensors(info: GGUFInfo) -> list[str]:
    """One problem per tensor of ``info`` holding NaN or infinite values (its data memory-mapped)."""
    if not info.tensors:
        return []
    mm = np.memmap(info.path, dtype=np.uint8, mode="r")
    problems = []
    try:
        for t in info.tensors.values():
            if t.n_bytes == 0:
                continue
            bad = nonfinite_count(mm[t.offset : t.offset + t.n_bytes], t)
            if bad:
                n = int(np.prod(t.shape)) if t.shape else 1
                problems.append(f"tensor {t.name}: {bad} of {n} values are NaN or infinite")
    finally:
        del mm
    return problems
