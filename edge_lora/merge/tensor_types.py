"""Storage types of merged tensors: which type each touched tensor gets, and encoding to it.

Encoding goes through libggml's own quantizer (``ggml_quantize_chunk``, through
:func:`edge_lora.engine.native.quantize_rows`), never a hand-written one. When a
type's blocks do not fit a tensor's rows, the type falls back as llama.cpp's own
quantizer does (``tensor_type_fallback`` in ``src/llama-quant.cpp``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

from ..errors import InvalidRequestError

#: ``--outtype`` values: ``same`` keeps each touched tensor's own type (a Q4_K_M base stays a
#: Q4_K_M mixture); the others are ggml tensor types that quantize without an importance matrix
OUTTYPES: dict[str, T | None] = {
    "same": None,
    "f32": T.F32, "f16": T.F16, "bf16": T.BF16,
    "q8_0": T.Q8_0, "q6_k": T.Q6_K, "q5_k": T.Q5_K, "q5_1": T.Q5_1, "q5_0": T.Q5_0,
    "q4_k": T.Q4_K, "q4_1": T.Q4_1, "q4_0": T.Q4_0, "iq4_nl": T.IQ4_NL, "q3_k": T.Q3_K, "q2_k": T.Q2_K,
}

#: llama.cpp file recipes (mixtures of types) rather than tensor types
_RECIPES = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k_s")

#: llama-quant.cpp tensor_type_fallback: what a type becomes when its blocks do not fit a row
_FALLBACK: dict[T, T] = {
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
}

#: types that ggml cannot quantize to without an importance matrix (ggml_quantize_requires_imatrix)
NEEDS_IMATRIX = {T.IQ2_XXS, T.IQ2_XS, T.IQ1_S, T.IQ1_M, T.IQ2_S}


def check_outtype(outtype: str) -> T | None:
    """The ggml type named by ``outtype`` (None for ``same``); :class:`InvalidRequestError` otherwise."""
    key = outtype.lower()
    if key in OUTTYPES:
        return OUTTYPES[key]
    if key in _RECIPES:
        raise InvalidRequestError(
            f"--outtype {outtype}: {key.upper()} is a llama.cpp file recipe (a mixture of types), not a tensor type. "
            f"'same' keeps each touched tensor's own type, so a {key.upper()} base stays {key.upper()}; "
            f"or name a tensor type: {', '.join(k for k in OUTTYPES if k != 'same')}"
        )
    raise InvalidRequestError(f"--outtype {outtype!r}: not one of {', '.join(OUTTYPES)}")


def block_size(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def row_bytes(t: T, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` values stored as ``t`` (``ggml_row_size``)."""
    block, size = GGML_QUANT_SIZES[t]
    return n_per_row // block * size


def target_type(base_type: T, outtype: T | None, n_per_row: int) -> tuple[T, str | None]:
    """The type a merged tensor is written as, and a note when it is not the one asked for.

    ``outtype`` None keeps ``base_type``. A type whose blocks do not divide ``n_per_row``
    falls back like llama.cpp's quantizer (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, ...,
    then F16 when even that does not fit)."""
    want = base_type if outtype is None else outtype
    if n_per_row % block_size(want) == 0:
        return want, None
    got = _FALLBACK.get(want, want)
    if n_per_row % block_size(got):
        got = T.F16
    return got, f"rows of {n_per_row} values do not fill {want.name} blocks of {block_size(want)}: written as {got.name} (llama.cpp's quantizer does the same)"


def unmergeable_reason(base_type: T, outtype: T | None) -> str | None:
    """Why a touched tensor of ``base_type`` cannot be re-encoded, or None."""
    want = base_type if outtype is None else outtype
    if want in NEEDS_IMATRIX:
        return (f"{want.name} needs an importance matrix to quantize, which a merge does not have: "
                "pass --outtype with a type that does not (q4_k, q5_k, iq4_nl, q8_0, f16...)")
    if want not in GGML_QUANT_SIZES or want in (T.F64, T.I8, T.I16, T.I32, T.I64):
        return f"{want.name} tensors cannot be merged into; pass --outtype f16 or a quantized type"
    return None


def encode(w: np.ndarray, t: T, *, threads: int | None = None) -> np.ndarray:
    """Encode ``w`` (float32, (rows, n_per_row)) as ``t`` with ggml's quantizer; returns the
    bytes as uint8 (rows, row_bytes), or float32 itself for F32. Rows are split across
    ``threads`` (default: every core); ggml_quantize_chunk releases the GIL."""
    from ..engine.native import quantize_rows

    w = np.ascontiguousarray(w, dtype=np.float32)
    if t == T.F32:
        return w
    n_rows, n_per_row = w.shape
    n_threads = max(1, min(threads or os.cpu_count() or 1, n_rows // 64 or 1))
    bounds = np.linspace(0, n_rows, n_threads + 1, dtype=np.int64)
    chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    if len(chunks) == 1:
        parts = [quantize_rows(w, int(t))]
    else:
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            parts = list(pool.map(lambda c: quantize_rows(w[c[0]:c[1]], int(t)), chunks))
    out = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return out.reshape(n_rows, row_bytes(t, n_per_row))
