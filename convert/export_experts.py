"""Expert LoRA back to PEFT's layouts, for ``export --peft``.

- ``fused`` (transformers 5, PEFT's ``target_parameters``): the parts of a fused expert parameter
  (``ffn_gate_exps`` + ``ffn_up_exps`` -> ``mlp.experts.gate_up_proj``) joined again, one
  ``lora.ParamWrapper`` LoRA per parameter: lora_A (E r, in), lora_B (out, E r) (the inverse of
  :meth:`~edge_lora.lora.pair.LoraPair.from_peft_experts`). Parts with the same A (as ``convert``
  writes them) keep it; others are stacked by rank with B block-diagonal (exact). Several
  parameters of one module are nested wrappers, the first in the module's parameter order
  innermost (``experts.base_layer.lora_A``), as PEFT builds them.
- ``per-expert`` (transformers 4): one linear LoRA per expert (``mlp.experts.E.up_proj``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge_lora.families import Family
from edge_lora.families.base import FusedExperts
from edge_lora.lora.pair import LINEAR, LoraPair
from edge_lora.lora.scales import llama_cpp_scale

EXPERT_LAYOUTS = ("fused", "per-expert")


@dataclass(frozen=True)
class ExpertModule:
    """One PEFT LoRA of expert weights: its state-dict module path, the key its rank goes under
    (``model.layers.1.mlp.experts.gate_up_proj``; a per-expert module's own path), PEFT-layout
    factors, and whether it is a ``target_parameters`` entry."""

    module: str
    rank_key: str
    a: np.ndarray
    b: np.ndarray
    rank: int
    parameter: bool
    source: str  # the (first) GGUF tensor it comes from, whose storage types it keeps


def per_expert_modules(spec: Family, gguf_name: str, stacked: str, w: LoraPair) -> Iterator[ExpertModule]:
    """transformers 4's layout of one expert tensor (``stacked``: its module in the reverse table):
    one linear LoRA per expert, zero factors included."""
    for e in range(w.a.shape[0]):
        name = spec.expert_module(stacked, e)
        assert name is not None  # the reverse table gives expert tensors only their stacked modules
        pair = LoraPair(w.a[e], w.b[e], w.scale, LINEAR)
        yield ExpertModule(name, name, *pair.to_peft(), pair.rank, False, gguf_name)


def fused_modules(spec: Family, pairs: dict[str, LoraPair], n_layers: int,
                  alpha: float) -> tuple[list[ExpertModule], list[str]]:
    """transformers 5's layout for a file's expert pairs (``pairs``: GGUF tensor name -> pair read
    at llama.cpp's scale; ``alpha`` the file's), under the family's :attr:`~Family.experts_path`;
    the GGUF names no fused parameter of the family holds are returned as left over."""
    out: list[ExpertModule] = []
    used: set[str] = set()
    for bid in range(n_layers):
        parent = spec.experts_path.format(bid=bid)
        present = []
        for fx in (f for f in spec.fused_experts if not f.bias):
            names = {part: found[1] for part in fx.parts
                     if (found := spec.tensor_for(f"{parent}.{part}", n_layers)) is not None and found[1] in pairs}
            if names:
                present.append((fx, names))
        for i, (fx, names) in enumerate(present):
            a, b = _join(fx, {part: pairs[g] for part, g in names.items()}, alpha)
            n_experts, rank = a.shape[0], a.shape[1]
            a_flat = a.reshape(n_experts * rank, a.shape[2])
            b_flat = b.transpose(1, 2, 0).reshape(b.shape[1], rank * n_experts)  # B.reshape(out, r, E) read back
            module = parent + ".base_layer" * (len(present) - 1 - i)
            out.append(ExpertModule(module, f"{parent}.{fx.param}", np.ascontiguousarray(a_flat),
                                    np.ascontiguousarray(b_flat), rank, True, next(iter(names.values()))))
            used |= set(names.values())
    return out, sorted(set(pairs) - used)


def _join(fx: FusedExperts, parts: dict[str, LoraPair], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One LoRA (a (E, r, in), b (E, out, r)) of the fused weight from its parts', for llama.cpp's
    (and the exported config's) scale ``alpha / r`` at the joined rank: each part's B rescaled
    from its own scale (not at all when the parts share A and rank: the bytes are kept)."""
    first = next(iter(parts.values()))
    part_rows = first.b.shape[1]  # the parts of one fused weight have one size (gate and up: ff)
    shared = all(p.a.shape == first.a.shape and np.array_equal(p.a, first.a) for p in parts.values())
    cols: dict[str, slice] = {}
    if shared:
        a = first.a
        cols = {k: slice(0, first.rank) for k in parts}
    else:
        a = np.concatenate([parts[k].a for k in fx.parts if k in parts], axis=1)
        start = 0
        for k in fx.parts:
            if k in parts:
                cols[k] = slice(start, start + parts[k].rank)
                start += parts[k].rank
    joined = llama_cpp_scale(alpha, a.shape[1])
    b = np.zeros((first.b.shape[0], part_rows * len(fx.parts), a.shape[1]), dtype=np.float32)
    for k, rows in zip(fx.parts, fx.part_rows(b.shape[1])):
        if k in parts:
            factor = parts[k].scale / joined
            b[:, rows, cols[k]] = parts[k].b if factor == 1.0 else parts[k].b.astype(np.float64) * factor
    return np.ascontiguousarray(a, dtype=np.float32), b
