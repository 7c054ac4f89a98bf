"""DoRA (weight-decomposed LoRA) merged exactly into a weight.

DoRA (Liu et al. 2024, arXiv:2402.09353) scales each output row of the LoRA-updated
weight to a trained magnitude:

    W' = m / ||W + s * B @ A||_row * (W + s * B @ A)

the norm per output row over the input dimension. This is PEFT's
``DoraLinearLayer`` (``get_weight_norm``: ``linalg.norm(weight + scaling * lora_weight, dim=1)``;
the forward ``(m / norm) * (W x + s B A x)``) and MLX-LM's ``DoRALinear.fuse``. It is
not a low-rank update, so a DoRA adapter cannot be a GGUF LoRA; merged into the very
base weights that will be served (dequantized), it is exact.
"""

from __future__ import annotations

import numpy as np


def apply_dora(w_plus_delta: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """``magnitude[:, None] / ||w_plus_delta||_row * w_plus_delta``.

    ``w_plus_delta``: (out, in) float32, the weight with the LoRA update already added (experts:
    (E, out, in), each expert's rows); ``magnitude``: (out,) (experts: (E, out)). Norms are taken in float64. A row whose norm is 0 stays 0
    (PEFT would divide by zero there)."""
    norm = np.linalg.norm(w_plus_delta.astype(np.float64), axis=-1)
    factor = np.divide(magnitude.astype(np.float64), norm, out=np.zeros_like(norm), where=norm > 0)
    return (w_plus_delta * factor[..., None].astype(np.float32)).astype(np.float32, copy=False)
