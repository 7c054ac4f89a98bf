"""Separate q/k/v LoRA onto a fused ``attn_qkv`` base (llama.cpp's ``--fuse-qkv``), and gate/up
expert LoRA onto a fused ``ffn_gate_up_exps`` (``--fuse-gate-up-exps``), exactly.

The base converter concatenates the (transformed) q, k and v weights by rows; the LoRAs of the
parts become one LoRA of the fused weight with A stacked and B block-diagonal
(:func:`edge_lora.lora.pair.pack`), so ``B A`` is the parts' deltas stacked by rows. A part the
adapter leaves out gets a zero pair (no change); its row count is what the fused tensor leaves
over (k and v have as many rows as each other, grouped-query attention or not).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from gguf import MODEL_TENSOR, TENSOR_NAMES

from edge_lora.lora.pair import LoraPair, pack
from edge_lora.lora.scales import llama_cpp_scale


def pack_parts(fused_name: str, part_names: tuple[str, ...], parts: dict[int, tuple[str, LoraPair]],
               base_tensors: dict[str, tuple[int, ...]], alpha: float, problems: list[str]) -> LoraPair | None:
    """The fused tensor's pair from the pairs of its parts (``parts``: index -> (module, pair), each
    folded for llama.cpp's rule at its own rank and the file's ``alpha``), checked against the base's
    fused shape and folded again for the fused rank; None (with a problem) when the parts cannot
    fill it."""
    *lead, rows, cols = base_tensors[fused_name]  # lead: (E,) for experts
    dora = [m for m, p in parts.values() if p.magnitude is not None]
    if dora:
        problems.append(f"{fused_name}: DoRA on {', '.join(dora)} of a fused base is not supported (its magnitude "
                        "is per part)")
        return None
    known = {i: p.b.shape[-2] for i, (_, p) in parts.items()}
    sizes = _missing_rows(len(part_names), known, rows)
    if sizes is None:
        problems.append(f"{fused_name}: the LoRA of {', '.join(m for m, _ in parts.values())} does not fit the "
                        f"fused base tensor {(*lead, rows, cols)}")
        return None
    full = []
    for i in range(len(part_names)):
        if i in parts:  # back to its effective scale: llama.cpp's factor at the part's own rank
            full.append(parts[i][1].scaled(llama_cpp_scale(alpha, parts[i][1].rank)))
        else:  # a zero pair of rank 1: the fused LoRA leaves these rows alone
            layout = next(iter(parts.values()))[1].layout
            full.append(LoraPair(np.zeros((*lead, 1, cols), np.float32), np.zeros((*lead, sizes[i], 1), np.float32),
                                 1.0, layout))
    packed = pack(full)  # the effective scales folded in: scale 1
    packed = replace(packed, scale=1.0 / llama_cpp_scale(alpha, packed.rank)).folded()  # llama.cpp's rule, fused rank
    problem = packed.fits(fused_name, (*lead, rows, cols))
    if problem:
        problems.append(problem)
        return None
    return packed


def _missing_rows(n_parts: int, known: dict[int, int], rows: int) -> dict[int, int] | None:
    """Row counts of the parts the adapter leaves out, from the fused ``rows``: one missing part
    gets what is left; of q, k, v, a missing k or v has the other's rows (or half of what is left
    when both are missing). None when the known parts cannot fill the fused rows."""
    missing = [i for i in range(n_parts) if i not in known]
    left = rows - sum(known.values())
    if not missing:
        sizes: dict[int, int] = {}
    elif len(missing) == 1:
        sizes = {missing[0]: left}
    elif n_parts == 3 and missing == [1, 2]:
        sizes = {1: left // 2, 2: left - left // 2}
    elif n_parts == 3 and 0 in missing:  # q and one of k, v: that one has the other's rows
        kv = known[3 - missing[1]]
        sizes = {missing[1]: kv, 0: left - kv}
    else:
        return None
    if any(n <= 0 for n in sizes.values()) or sum(sizes.values()) != left:
        return None
    return sizes


def fused_expert_part_shapes(tensors: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``tensors`` with the shapes of the parts of each fused ``ffn_gate_up_exps`` (E, 2 ff, in) added
    (gate and up, (E, ff, in) each: llama.cpp's converter concatenates them by rows), so the expert
    LoRA readers check against them before the parts are packed."""
    out = dict(tensors)
    fused_kind = TENSOR_NAMES[MODEL_TENSOR.FFN_GATE_UP_EXP].split(".")[-1]
    parts = [TENSOR_NAMES[t].split(".")[-1] for t in (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP)]
    for name, shape in tensors.items():
        kind = name.split(".")[2] if name.count(".") >= 3 else ""
        if kind == fused_kind and len(shape) == 3 and shape[1] % 2 == 0:
            for part in parts:
                out.setdefault(name.replace(fused_kind, part), (shape[0], shape[1] // 2, shape[2]))
    return out
