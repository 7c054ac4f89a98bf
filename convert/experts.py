"""Per-expert LoRA (transformers 4 MoE layers: one ``nn.Linear`` per expert) stacked into the 3-D
expert tensors llama.cpp multiplies with ``build_lora_mm_id``.

The base converter stacks ``mlp.experts.E.{gate,up,down}_proj`` into ``ffn_*_exps`` of numpy
shape (E, out, in), expert 0 first; the adapter's factors are stacked the same way: A
(E, r, in), B (E, out, r). llama.cpp scales every expert by one ``alpha / r`` (r from B's shape),
so experts of another rank are zero-padded to the largest (exact: the padding adds nothing) and
experts the adapter leaves out get zero factors (exact: no change), with each expert's own scale
folded into its B. llama.cpp's loader does not check the expert count; the base's is checked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from edge_lora.families import Family
from edge_lora.lora.pair import LINEAR, LoraPair, stack_experts
from edge_lora.lora.scales import b_fold_factor

from .checkpoint import LoraModule


def expert_pairs(modules: Sequence[LoraModule], spec: Family, n_layers: int, alpha: float,
                 base_tensors: dict[str, tuple[int, ...]] | None, problems: list[str],
                 notes: list[str]) -> dict[str, tuple[LoraPair, list[str]]]:
    """The stacked pair of every expert tensor the per-expert ``modules`` touch, by GGUF tensor name,
    with the module paths that went into it. ``alpha`` is the file's (``adapter.lora.alpha``);
    ``base_tensors`` the base's shapes (None: unchecked, the expert count is then the largest
    index + 1). Every problem is appended to ``problems``."""
    groups: dict[str, dict[int, LoraModule]] = {}
    for mod in modules:
        stacked, e = spec.expert_of(mod.module)  # type: ignore[misc]  # callers pass expert modules only
        groups.setdefault(stacked, {})[e] = mod
    out: dict[str, tuple[LoraPair, list[str]]] = {}
    for stacked, by_expert in sorted(groups.items()):
        found = spec.tensor_for(stacked, n_layers)
        if found is None:
            problems.append(f"{stacked}: the experts of this module have no {spec.name} tensor")
            continue
        ttype, gname = found
        if spec.row_transform(ttype, 1, 1) is not None:
            problems.append(f"{gname}: expert LoRA on a tensor whose rows the base converter transforms is not supported")
            continue
        pair = _stack(stacked, gname, by_expert, alpha, base_tensors, problems, notes)
        if pair is not None:
            out[gname] = (pair, [by_expert[e].module for e in sorted(by_expert)])
    return out


def _stack(stacked: str, gname: str, by_expert: dict[int, LoraModule], alpha: float,
           base_tensors: dict[str, tuple[int, ...]] | None, problems: list[str], notes: list[str]) -> LoraPair | None:
    any_mod = next(iter(by_expert.values()))
    out_dim, in_dim = int(any_mod.b.shape[0]), int(any_mod.a.shape[1])
    if base_tensors is not None:
        have = base_tensors.get(gname)
        if have is None:
            problems.append(f"{stacked}: the base has no tensor {gname} (a dense base, or another expert layout)")
            return None
        if len(have) != 3:
            problems.append(f"{stacked}: the base's {gname} is {tuple(have)}, not a 3-D expert tensor")
            return None
        n_experts = int(have[0])
        if tuple(have[1:]) != (out_dim, in_dim):
            problems.append(f"{stacked}: the experts' LoRA implies ({out_dim}, {in_dim}) weights but the base's "
                            f"{gname} is {tuple(have)} (experts, out, in)")
            return None
    else:
        n_experts = max(by_expert) + 1
    beyond = sorted(e for e in by_expert if e >= n_experts)
    if beyond:
        problems.append(f"{stacked}: LoRA on expert {beyond[0]}, but the base has {n_experts} experts")
        return None
    bad = [m.module for m in by_expert.values() if (int(m.b.shape[0]), int(m.a.shape[1])) != (out_dim, in_dim)]
    dora = [m for m in by_expert.values() if m.magnitude is not None]
    if dora and len(dora) != n_experts:  # a plain expert's DoRA identity needs its weight's norms
        problems.append(f"{stacked}: DoRA on {len(dora)} of {n_experts} experts; merge needs every expert's magnitude")
    if bad or (dora and len(dora) != n_experts):
        problems += [f"{b}: its LoRA's shape differs from the other experts' of {stacked}" for b in bad]
        return None
    rank = max(m.rank for m in by_expert.values())
    pairs = []
    for e in range(n_experts):
        mod = by_expert.get(e)
        if mod is None:
            pairs.append(LoraPair(np.zeros((rank, in_dim), np.float32), np.zeros((out_dim, rank), np.float32)))
            continue
        p = LoraPair.from_peft(mod.a, mod.b, LINEAR, scale=b_fold_factor(mod.scale, alpha, rank)).folded()
        if p.rank < rank:  # zero rank-padding: the product is unchanged
            p = LoraPair(np.pad(p.a, ((0, rank - p.rank), (0, 0))), np.pad(p.b, ((0, 0), (0, rank - p.rank))))
        pairs.append(p)
    missing = n_experts - len(by_expert)
    if missing:
        notes.append(f"{stacked}: {missing} of {n_experts} experts have no LoRA: written as zero factors (no change)")
    if len({m.rank for m in by_expert.values()}) > 1:
        notes.append(f"{stacked}: experts of ranks {sorted({m.rank for m in by_expert.values()})} zero-padded to "
                     f"rank {rank} (exact)")
    out = stack_experts(pairs)
    if dora:  # DoRA's magnitude m (E, out), read for merging only
        out = replace(out, magnitude=np.stack([by_expert[e].magnitude for e in range(n_experts)]).astype(np.float32))
    return out
