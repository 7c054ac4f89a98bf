"""Requantize a merged weight so that the adapter's change survives the quantizer.

Rounding ``W + delta`` to the nearest point of the base's own grid (what a plain
requantization does) mostly snaps back to the base weights: a LoRA delta is often
smaller than half a quantization step, so the merged model loses the adapter.
GPTQ (Frantar et al. 2023, arXiv:2210.17323, Algorithm 1 with lazy batches) instead
minimises the error of the layer's *output* on calibration inputs,
``||(Q - T) X||^2`` with ``H = X^T X``: after each group of columns is quantized, the
remaining columns absorb its error, weighted by the inverse Hessian.

Each group is as wide as one block of the type (32, or 256 for K-quants) and is
quantized by ggml's own quantizer (:func:`.tensor_types.encode`); only the error
feedback is computed here.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from .tensor_types import block_size, encode, row_bytes

#: dampening: this fraction of the mean diagonal of H is added to it
DAMP = 0.01


def upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """``U`` upper triangular with ``U^T U = (H + damp I)^-1`` (float64), as GPTQ uses it.
    Inputs that never fired (zero diagonal) get a unit diagonal, so they take no error."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    # float32 halves the O(n^3) cost (the dampened H is well conditioned); float64 if that fails
    for dtype in (np.float32, np.float64):
        try:
            u = np.linalg.cholesky(np.linalg.inv(h.astype(dtype))).T
        except np.linalg.LinAlgError:
            continue
        if np.isfinite(u).all():
            return u.astype(np.float64)
    raise np.linalg.LinAlgError("the calibration inputs' second moment is not positive definite")


def gptq_encode(target: np.ndarray, u: np.ndarray, t: GGMLQuantizationType, *, threads: int | None = None) -> np.ndarray:
    """Encode ``target`` (float32 (rows, n_in)) as ``t`` minimising ``||(Q - target) X||``
    for inputs with second moment ``H = X^T X``, given ``u = upper_cholesky_of_inverse(H)``
    (shared by the weights that read the same input); returns the bytes as uint8
    (rows, row_bytes), like :func:`.tensor_types.encode`."""
    rows, n_in = target.shape
    g = block_size(t)
    w = target.astype(np.float64)
    out = np.empty((rows, row_bytes(t, n_in)), dtype=np.uint8)
    per_group = row_bytes(t, g)
    for i in range(0, n_in, g):
        j = i + g
        block = w[:, i:j].astype(np.float32)
        q = encode(block, t, threads=1)  # one block per row: threads would cost more than they save
        out[:, i // g * per_group:(i // g + 1) * per_group] = q
        if j < n_in:
            err = w[:, i:j] - np.asarray(dequantize(q, t), dtype=np.float64).reshape(rows, g)
            # W_rest -= E inv(U_bb) U_b,rest: the optimal change of the remaining columns
            w[:, j:] -= err @ np.linalg.solve(u[i:j, i:j], u[i:j, j:])
    return out
