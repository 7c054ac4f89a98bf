"""PEFT's LoRA variants (``LoraConfig``'s ``*_config`` fields, PEFT ``tuners/lora/variants.py``):
which are a plain LoRA at inference, which expand exactly to one, which cannot be converted.

=============  =========================================================================  ==========
variant        at inference (PEFT's ``forward`` with ``module.training`` False)          here
=============  =========================================================================  ==========
VeLoRA         ``scaling * B (A x)``: ``lora_velora_embed`` only shapes the backward      converts
MonteCLoRA     ``scaling * B (A x)``: ``lora_monteclora_sampler.*`` samples A's noise     converts
               in training only (its merge is the plain LoRA's delta)
BD-LoRA        A or B block-diagonal, stored as its blocks stacked by rows               expands
               (``BlockDiagonalLinear``: ``torch.block_diag(*weight.chunk(nblocks))``)    exactly
KaSA           on a base whose r smallest singular components PEFT removed at init,       refused
               with a learned diagonal between A and B
=============  =========================================================================  ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_lora._validate import is_int

#: saved tensor-name segment -> (config field, what it is): training-only state, dropped
TRAINING_ONLY = {
    "lora_velora_embed": ("velora_config", "VeLoRA's compression embeddings (lora_velora_embed), used by its "
                          "backward pass only; at inference VeLoRA is a plain LoRA"),
    "lora_monteclora_sampler": ("monteclora_config", "MonteCLoRA's variational parameters "
                                "(lora_monteclora_sampler.*), which sample A's noise in training only; at inference "
                                "(and in PEFT's merge) MonteCLoRA is a plain LoRA"),
}

#: config field -> why it cannot be converted (the saved tensors it adds are then explained by it)
REFUSED = {
    "kasa_config": ("lora_diag", "KaSA (kasa_config): PEFT removed the r smallest singular components of each "
                    "adapted base weight at initialisation and learns a diagonal (lora_diag) between A and B, so on "
                    "the original base (what the GGUF holds) the adapter is wrong, and the truncation cannot be "
                    "redone on quantized weights; merge it in PEFT (merge_and_unload) and convert the merged model "
                    "with llama.cpp's convert_hf_to_gguf.py"),
}


def training_only(name: str) -> str | None:
    """The TRAINING_ONLY segment ``name`` (a saved tensor) belongs to, or None."""
    parts = name.split(".")
    return next((seg for seg in TRAINING_ONLY if seg in parts), None)


def refused_tensor(name: str, cfg: dict[str, Any]) -> str | None:
    """The REFUSED config field that explains tensor ``name`` (set in ``cfg``), or None."""
    parts = name.split(".")
    return next((key for key, (seg, _) in REFUSED.items() if cfg.get(key) and seg in parts), None)


def variant_problems(cfg: dict[str, Any]) -> list[str]:
    """The variants of ``cfg`` that cannot be converted, and a malformed ``use_bdlora``."""
    out = [f"adapter_config.json: {why}" for key, (_, why) in REFUSED.items() if cfg.get(key)]
    bd = cfg.get("use_bdlora")
    if bd is not None and BlockDiagonal.of(cfg) is None:
        out.append(f"adapter_config.json: use_bdlora must hold nblocks (a positive integer) and lists "
                   f"target_modules_bd_a / target_modules_bd_b of names, found {bd!r}")
    return out


@dataclass(frozen=True)
class BlockDiagonal:
    """BD-LoRA's config (PEFT ``BdLoraConfig``): modules whose A or B is block-diagonal,
    matched as PEFT matches them (``pattern in module_path``)."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    nblocks: int

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> BlockDiagonal | None:
        bd = cfg.get("use_bdlora")
        if not isinstance(bd, dict):
            return None
        a, b, n = bd.get("target_modules_bd_a") or [], bd.get("target_modules_bd_b") or [], bd.get("nblocks")
        names = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
        if not (names(a) and names(b) and is_int(n) and n > 0):
            return None
        return cls(tuple(a), tuple(b), int(n))

    def side(self, path: str) -> str | None:
        """``"A"``, ``"B"`` or None: which factor of the module at ``path`` (the path PEFT saw) is
        block-diagonal; :class:`ValueError` when both match (PEFT refuses that too)."""
        in_a, in_b = any(p in path for p in self.a), any(p in path for p in self.b)
        if in_a and in_b:
            raise ValueError(f"{path}: matches both target_modules_bd_a and target_modules_bd_b")
        return "A" if in_a else "B" if in_b else None

    def expand(self, path: str, factor: str, w: np.ndarray) -> np.ndarray:
        """The dense factor: ``w`` (``(rows, cols / nblocks)``, the blocks stacked by rows) as
        ``torch.block_diag(*w.chunk(nblocks, 0))``, ``(rows, cols)``. :class:`ValueError` when
        the rows do not split into ``nblocks`` equal blocks (PEFT could not have saved it)."""
        if w.ndim != 2 or w.shape[0] % self.nblocks:
            raise ValueError(f"{path}: block-diagonal lora_{factor} {tuple(w.shape)}: {w.shape[0]} rows do not split "
                             f"into nblocks={self.nblocks} blocks")
        n, m = w.shape[0] // self.nblocks, w.shape[1]
        out = np.zeros((w.shape[0], m * self.nblocks), dtype=w.dtype)
        for i in range(self.nblocks):
            out[i * n : (i + 1) * n, i * m : (i + 1) * m] = w[i * n : (i + 1) * n]
        return out
