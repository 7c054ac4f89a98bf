"""``target_parameters`` LoRA on transformers 5's fused expert parameters, onto llama.cpp's stacked
expert tensors.

transformers 5 keeps a MoE layer's experts in 3-D parameters of one module
(``mlp.experts.gate_up_proj`` (E, 2 ff, hidden), ``mlp.experts.down_proj`` (E, hidden, ff);
gpt-oss stores them (E, in, out)), which PEFT adapts with ``lora.ParamWrapper``: lora_A (E r, x),
lora_B (y, E r), expert e's change ``B_e @ A_e`` (:meth:`LoraPair.from_peft_experts`). Two
parameters of one module are nested wrappers (``experts.base_layer.lora_A``), and which factor
faces the input changed between PEFT versions (0.21 swaps in and out for (E, out, in)
parameters so that A faces the input): both are decided here from the shapes against the base.
A square weight takes the orientation the adapter's other expert parameters show (one PEFT
version wrote them all); with none to show it, it is refused.

The base converter splits a fused parameter into its parts (``ffn_gate_exps``, ``ffn_up_exps``:
:class:`~edge_lora.families.base.FusedExperts`); the LoRA follows by B's rows, A shared: exact,
each part at the same rank, less the rank components whose B rows of that part are all zero. The module's scale (PEFT's alpha / r of that parameter) is folded
into B for llama.cpp's file-wide ``alpha / rank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edge_lora.families import Family
from edge_lora.families.base import FusedExperts
from edge_lora.lora.pair import LoraPair
from edge_lora.lora.scales import b_fold_factor

from .checkpoint import LoraModule, ParamTarget


@dataclass(frozen=True)
class _Fit:
    target: ParamTarget
    fused: FusedExperts
    parts: tuple[str, ...]  # GGUF names of the parts, in row order
    n_experts: int
    faces_input: bool | None  # whether A faces the weight's input; None: a square weight, undecidable


def param_pairs(modules: Sequence[LoraModule], spec: Family, n_layers: int, alpha: float,
                base_tensors: dict[str, tuple[int, ...]] | None,
                problems: list[str]) -> dict[str, tuple[LoraPair, list[str]]]:
    """The stacked pair of every expert tensor the ``target_parameters`` ``modules`` touch, by GGUF
    tensor name, with the module that went into it. ``alpha`` is the file's; the base's shapes
    are required (which parameter and which orientation are read from them). Every problem is
    appended to ``problems``."""
    if not modules:
        return {}
    if base_tensors is None:
        problems.append(f"{modules[0].module}: LoRA on fused expert parameters (target_parameters) is matched to "
                        "the base's expert tensors by their shapes: pass --base")
        return {}
    out: dict[str, tuple[LoraPair, list[str]]] = {}
    taken: set[tuple[str, str]] = set()
    chosen: list[tuple[LoraModule, _Fit, str]] = []
    for mod in modules:
        fits = [f for t in mod.parameters if (f := _fit(mod, t, spec, n_layers, base_tensors)) is not None]
        named = ", ".join(t.name for t in mod.parameters)
        where = f"{mod.module} ({mod.sources[0].rsplit('.lora_A', 1)[0]})"
        if not fits:
            known = [f.param for f in spec.fused_experts]
            problems.append(f"{where}: its LoRA ({tuple(mod.a.shape)}, {tuple(mod.b.shape)}) fits none of the base's "
                            f"expert tensors for {named}" + ("" if known else f" ({spec.name} has no fused expert "
                                                                                "parameters)"))
        elif len(fits) > 1:
            problems.append(f"{where}: its LoRA fits several of {named} (same shapes): cannot tell which it adapts")
        elif (mod.module, fits[0].target.name) in taken:
            problems.append(f"{where}: a second LoRA on {fits[0].target.name}")
        else:
            taken.add((mod.module, fits[0].target.name))
            chosen.append((mod, fits[0], where))
    # one PEFT version wrote the file: a square weight takes the orientation its other parameters show
    # (gpt-oss-20b's down_proj is 2880 x 2880, its gate_up_proj is not)
    shown = {f.faces_input for _, f, _ in chosen if f.faces_input is not None}
    for mod, fit, where in chosen:
        faces = fit.faces_input if fit.faces_input is not None else (next(iter(shown)) if len(shown) == 1 else None)
        if faces is None:
            problems.append(f"{where}: {fit.target.name}'s experts are square, so whether lora_A faces their input "
                            "or output (PEFT changed this between versions) cannot be told from the shapes"
                            + (", and the adapter's other parameters disagree" if shown else
                               " (no other expert parameter of the adapter shows it)"))
            continue
        r = mod.rank // fit.n_experts
        pair = LoraPair.from_peft_experts(mod.a, mod.b, fit.n_experts,
                                          scale=b_fold_factor(fit.target.scale, alpha, r)).folded()
        if not faces:
            pair = pair.transposed()
        n_rows = pair.b.shape[1]
        for gname, rows in zip(fit.parts, fit.fused.part_rows(n_rows)):
            out[gname] = (_without_zero_ranks(pair.take_rows(rows)), [mod.module])
    return out


def _fit(mod: LoraModule, target: ParamTarget, spec: Family, n_layers: int,
         base_tensors: dict[str, tuple[int, ...]]) -> _Fit | None:
    """How ``mod``'s factors fit parameter ``target`` of the base, or None when they do not."""
    fused = spec.fused_expert(mod.module, target.name)
    if fused is None or fused.bias:
        return None
    parts = []
    for part in fused.parts:
        found = spec.tensor_for(f"{mod.module}.{part}", n_layers)
        if found is None or found[1] not in base_tensors or len(base_tensors[found[1]]) != 3:
            return None
        parts.append(found[1])
    shapes = [tuple(int(n) for n in base_tensors[g]) for g in parts]
    if len({(s[0], s[2]) for s in shapes}) != 1:
        return None
    n_experts, n_in = shapes[0][0], shapes[0][2]
    n_out = sum(s[1] for s in shapes)
    if mod.rank != n_experts * target.rank:
        return None
    y, x = int(mod.b.shape[0]), int(mod.a.shape[1])
    if (y, x) == (n_out, n_in):
        faces: bool | None = None if n_out == n_in else True
    elif (y, x) == (n_in, n_out):
        faces = False
    else:
        return None
    return _Fit(target, fused, tuple(parts), n_experts, faces)


def _without_zero_ranks(pair: LoraPair) -> LoraPair:
    """The pair without the rank components whose B is zero in every expert (exact: they add
    nothing). PEFT writes ``gate_proj`` and ``up_proj`` targets as one ``gate_up_proj`` LoRA of rank
    2 r, B block-diagonal: each part keeps its own r."""
    live = np.flatnonzero(np.any(pair.b != 0, axis=(0, 1)))
    if len(live) in (0, pair.rank):
        return pair
    return replace(pair, a=np.ascontiguousarray(pair.a[:, live, :]), b=np.ascontiguousarray(pair.b[:, :, live]))
