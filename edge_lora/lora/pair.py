"""One base tensor's LoRA: the pair of factors, its scale and its layout, and the maths on it.

GGUF adapter layout (numpy order, what llama.cpp's ``llama-adapter.cpp`` loads):

==========  ===================  =================  ===================  ===============================
layout      base weight ``W``    ``a``              ``b``                ``delta``
==========  ===================  =================  ===================  ===============================
linear      (out, in)            (r, in)            (out, r)             ``scale * b @ a``
embedding   (vocab, hidden)      (vocab, r)         (hidden, r)          ``scale * a @ b.T``
experts     (E, out, in)         (E, r, in)         (E, out, r)          ``scale * b[e] @ a[e]`` per expert
==========  ===================  =================  ===================  ===============================

The embedding layout is transposed because llama.cpp gathers A's rows by token
(``llm_graph_context::build_inp_embd``); the expert layout is llama.cpp's
``build_lora_mm_id`` (``convert_lora_to_gguf.py`` writes it). PEFT stores an embedding's
factors as ``lora_embedding_A`` (r, vocab) and ``lora_embedding_B`` (hidden, r): see
:meth:`LoraPair.from_peft` and :meth:`LoraPair.to_peft`. The layout is decided in one place,
:func:`layout_for`, from the tensor's name and rank, never by comparing names elsewhere.

Pairs combine exactly: :func:`concat` (ranks stacked: several adapters on one tensor),
:func:`pack` / :func:`split` (the parts of a fused weight such as ``attn_qkv``, and back) and
:func:`stack_experts` (per-expert LoRAs as one expert-layout pair).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from ..formats.gguf_file import TOKEN_EMBD_TENSOR

Layout = Literal["linear", "embedding", "experts"]
LINEAR: Layout = "linear"
EMBEDDING: Layout = "embedding"
EXPERTS: Layout = "experts"


def layout_for(gguf_name: str, ndim: int = 2) -> Layout:
    """The layout of the LoRA on base tensor ``gguf_name`` whose factors have ``ndim`` dimensions:
    the token embedding's is ``embedding``, 3-D factors are ``experts``, everything else ``linear``."""
    if gguf_name == TOKEN_EMBD_TENSOR:
        return EMBEDDING
    return EXPERTS if ndim == 3 else LINEAR


def implied_weight_shape(layout: Layout, a_shape: Sequence[int], b_shape: Sequence[int]) -> tuple[int, ...]:
    """The base weight shape (numpy order) that factors of these shapes fit."""
    if layout == EMBEDDING:
        return int(a_shape[0]), int(b_shape[0])
    if layout == EXPERTS:
        return int(a_shape[0]), int(b_shape[1]), int(a_shape[2])
    return int(b_shape[0]), int(a_shape[1])


def shape_problem(name: str, layout: Layout, a_shape: Sequence[int], b_shape: Sequence[int],
                  weight_shape: Sequence[int]) -> str | None:
    """Why factors of ``a_shape`` and ``b_shape`` do not fit the base weight ``weight_shape`` in
    ``layout`` (llama-adapter.cpp's checks, numpy order), or None when they do."""
    a, b, w = tuple(a_shape), tuple(b_shape), tuple(weight_shape)
    ndim = 3 if layout == EXPERTS else 2
    if len(a) != ndim or len(b) != ndim or len(w) != ndim:
        return f"{name}: expected {ndim}-D factors and weight ({layout} LoRA), found a{a} b{b} weight{w}"
    rank_ok = (a[0] == b[0] and a[1] == b[2]) if layout == EXPERTS else (a[1] == b[1] if layout == EMBEDDING else a[0] == b[1])
    if not rank_ok or implied_weight_shape(layout, a, b) != w:
        return f"{name}: lora_a {a} and lora_b {b} do not fit the base weight {w}"
    return None


@dataclass(frozen=True)
class LoraPair:
    """One base tensor's LoRA in GGUF adapter layout (see the module docstring), float32.

    ``scale`` is the effective multiplier of the product (the user's scale and llama.cpp's
    ``alpha / rank`` included). ``magnitude`` is DoRA's ``m`` (out,) (experts: (E, out)), in GGUF
    row order, or None for a plain LoRA (the DoRA variant; :mod:`.dora` has its merge rule)."""

    a: np.ndarray
    b: np.ndarray
    scale: float = 1.0
    layout: Layout = LINEAR
    magnitude: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.b.shape[-1])

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The base weight shape (numpy order) these factors fit."""
        return implied_weight_shape(self.layout, self.a.shape, self.b.shape)

    def fits(self, name: str, weight_shape: Sequence[int]) -> str | None:
        """Why this pair does not fit base tensor ``name`` of ``weight_shape``, or None."""
        problem = shape_problem(name, self.layout, self.a.shape, self.b.shape, weight_shape)
        if problem is None and self.magnitude is not None and (
                self.layout == EMBEDDING or self.magnitude.shape != tuple(int(n) for n in weight_shape[:-1])):
            problem = f"{name}: DoRA magnitude {self.magnitude.shape} does not fit the base weight {tuple(weight_shape)}"
        return problem

    def delta(self) -> np.ndarray:
        """The weight change, float32 in numpy order of the base weight (DoRA's magnitude is not
        part of it: :func:`edge_lora.lora.dora.apply_dora` applies it to ``W + delta``)."""
        if self.layout == EMBEDDING:
            d = self.a @ self.b.T
        elif self.layout == EXPERTS:
            d = np.matmul(self.b, self.a)
        else:
            d = self.b @ self.a
        return (d * np.float32(self.scale)).astype(np.float32, copy=False)

    def folded(self) -> LoraPair:
        """The same change with ``scale`` folded into B (multiplied in float64) and scale 1:
        the factors to write into a file whose own scale rule yields 1."""
        if self.scale == 1.0:
            return self
        b = (self.b.astype(np.float64) * self.scale).astype(np.float32)
        return replace(self, b=b, scale=1.0)

    def scaled(self, k: float) -> LoraPair:
        """The same pair with its scale multiplied by ``k``."""
        return replace(self, scale=self.scale * k)

    def with_input_columns(self, cols: np.ndarray) -> LoraPair:
        """The LoRA of the weight with its input columns reordered, ``W[:, cols]``: A's columns
        (``delta = B @ A``); the row norms DoRA's magnitude divides by do not change."""
        if self.layout != LINEAR:
            raise ValueError(f"an input-column permutation applies to linear LoRA, not {self.layout}")
        return replace(self, a=np.ascontiguousarray(self.a[:, cols]))

    def with_output_rows(self, transform: Callable[[np.ndarray], np.ndarray]) -> LoraPair:
        """Output rows transformed (a row permutation the base converter applied to the weight,
        e.g. llama's Q/K): B's rows and the magnitude's, since ``delta = B @ A``'s rows are B's."""
        if self.layout != LINEAR:
            raise ValueError(f"an output-row transform applies to linear LoRA, not {self.layout}")
        mag = None if self.magnitude is None else transform(self.magnitude)
        return replace(self, b=np.ascontiguousarray(transform(self.b)), magnitude=mag)

    # -- PEFT's layout -----------------------------------------------------------------
    @classmethod
    def from_peft(cls, a: np.ndarray, b: np.ndarray, layout: Layout, *, scale: float = 1.0,
                  magnitude: np.ndarray | None = None) -> LoraPair:
        """From PEFT's layout: linear ``lora_A`` (r, in), ``lora_B`` (out, r); embedding
        ``lora_embedding_A`` (r, vocab), ``lora_embedding_B`` (hidden, r)."""
        if layout == EXPERTS:
            raise ValueError("PEFT's expert LoRA layout is read by its checkpoint reader, not here")
        a_gguf = a.T if layout == EMBEDDING else a
        return cls(np.ascontiguousarray(a_gguf, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32),
                   scale, layout, magnitude)

    @classmethod
    def from_peft_experts(cls, a: np.ndarray, b: np.ndarray, n_experts: int, *, scale: float = 1.0) -> LoraPair:
        """From PEFT's ``target_parameters`` layout of a 3-D expert parameter (``lora.ParamWrapper``):
        ``lora_A`` (E r, x) with each expert's r rows together, ``lora_B`` (y, E r) with the
        experts interleaved within each rank column group (PEFT's ``get_delta_weight``:
        ``A.reshape(E, r, x)``, ``B.reshape(y, r, E)``). Gives a (E, r, x), b (E, y, r): expert
        e's change is ``b[e] @ a[e]`` (y, x); which of x, y faces the input is the caller's to decide."""
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] % n_experts:
            raise ValueError(f"lora_A {a.shape} and lora_B {b.shape} are not {n_experts} experts' factors")
        r = a.shape[0] // n_experts
        a3 = a.reshape(n_experts, r, a.shape[1])
        b3 = b.reshape(b.shape[0], r, n_experts).transpose(2, 0, 1)
        return cls(np.ascontiguousarray(a3, dtype=np.float32), np.ascontiguousarray(b3, dtype=np.float32),
                   scale, EXPERTS)

    def transposed(self) -> LoraPair:
        """The LoRA of the transposed weight (experts: each expert's): ``(B A)^T = A^T B^T``, so
        A becomes B^T and B becomes A^T."""
        if self.layout == EMBEDDING or self.magnitude is not None:
            raise ValueError("only plain linear or expert LoRA can be transposed")
        a, b = np.swapaxes(self.b, -1, -2), np.swapaxes(self.a, -1, -2)
        return replace(self, a=np.ascontiguousarray(a), b=np.ascontiguousarray(b))

    def take_rows(self, rows: np.ndarray) -> LoraPair:
        """The LoRA of the output rows ``rows`` of the weight (linear or experts: B's rows, A kept)."""
        if self.layout == EMBEDDING:
            raise ValueError("output rows of an embedding LoRA are not taken this way")
        mag = None if self.magnitude is None else np.ascontiguousarray(self.magnitude[..., rows])
        return replace(self, b=np.ascontiguousarray(self.b[..., rows, :]), magnitude=mag)

    def to_peft(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` in PEFT's layout (the inverse of :meth:`from_peft`); the scale is not applied."""
        if self.layout == EXPERTS:
            raise ValueError("expert LoRA has no PEFT module layout")
        return (self.a.T if self.layout == EMBEDDING else self.a), self.b


def concat(pairs: Sequence[LoraPair]) -> LoraPair:
    """Pairs of one base tensor stacked along the rank axis, each scale folded into its B block:
    one pair (scale 1) whose delta is the sum of theirs, exactly. Float32 factors."""
    if not pairs:
        raise ValueError("no pairs to concatenate")
    layout = pairs[0].layout
    if any(p.layout != layout for p in pairs):
        raise ValueError("pairs of different layouts")
    a_axis = {LINEAR: 0, EMBEDDING: 1, EXPERTS: 1}[layout]
    a = np.concatenate([p.a for p in pairs], axis=a_axis)
    b = np.concatenate([p.b.astype(np.float64) * p.scale for p in pairs], axis=-1)
    return LoraPair(np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32), 1.0, layout)


def pack(pairs: Sequence[LoraPair]) -> LoraPair:
    """LoRAs of the parts of a fused weight (q, k, v into ``attn_qkv``; gate, up into a fused
    ``ffn_up`` or, per expert, ``ffn_gate_up_exps``), in the order of its rows, as one LoRA of the
    fused weight, exactly: the parts' deltas stacked by rows are ``blockdiag(B_i) @ vstack(A_i)``
    (each scale folded into its B; the rank is the sum), or, when the parts share one A, that A
    and their B stacked (the rank kept). Linear or expert layout, one for all;
    every part has the same input width (and expert count)."""
    if not pairs or pairs[0].layout not in (LINEAR, EXPERTS) or any(p.layout != pairs[0].layout for p in pairs):
        raise ValueError("pack takes linear pairs or expert pairs")
    if len({p.a.shape[:-2] + p.a.shape[-1:] for p in pairs}) != 1:
        raise ValueError("the parts of a fused weight share its input width")
    if all(p.a.shape == pairs[0].a.shape and np.array_equal(p.a, pairs[0].a) for p in pairs):
        # one A for all parts (PEFT's fused gate_up_proj LoRA, split by convert): B stacked by rows
        b = np.concatenate([p.b.astype(np.float64) * p.scale for p in pairs], axis=-2)
        return LoraPair(pairs[0].a, b.astype(np.float32), 1.0, pairs[0].layout)
    a = np.concatenate([p.a for p in pairs], axis=-2)
    lead = pairs[0].b.shape[:-2]  # () or (E,)
    b = np.zeros((*lead, sum(p.b.shape[-2] for p in pairs), a.shape[-2]), dtype=np.float64)
    row = col = 0
    for p in pairs:
        b[..., row : row + p.b.shape[-2], col : col + p.rank] = p.b.astype(np.float64) * p.scale
        row, col = row + p.b.shape[-2], col + p.rank
    return LoraPair(np.ascontiguousarray(a, dtype=np.float32), b.astype(np.float32), 1.0, pairs[0].layout)


def split(pair: LoraPair, rows: Sequence[int]) -> list[LoraPair]:
    """A fused weight's LoRA as the LoRAs of its parts of ``rows`` output rows each (the inverse
    of :func:`pack` up to rank: each part keeps the whole A and its rows of B, so each part's
    delta is exactly its rows of the fused delta)."""
    if pair.layout != LINEAR or sum(rows) != pair.b.shape[0]:
        raise ValueError(f"split {pair.b.shape[0]} rows of a linear pair into {list(rows)}")
    out, start = [], 0
    for n in rows:
        mag = None if pair.magnitude is None else pair.magnitude[start : start + n]
        out.append(LoraPair(pair.a, np.ascontiguousarray(pair.b[start : start + n]), pair.scale, LINEAR, mag))
        start += n
    return out


def stack_experts(pairs: Sequence[LoraPair]) -> LoraPair:
    """Per-expert linear LoRAs of one rank (expert 0 first) as one expert-layout pair: ``a``
    (E, r, in), ``b`` (E, out, r), each scale folded into its B."""
    if not pairs or any(p.layout != LINEAR for p in pairs):
        raise ValueError("stack_experts takes linear pairs")
    if len({(p.a.shape, p.b.shape) for p in pairs}) != 1:
        raise ValueError("the experts' LoRAs must have one shape (and rank)")
    a = np.stack([p.a for p in pairs])
    b = np.stack([p.b.astype(np.float64) * p.scale for p in pairs])
    return LoraPair(np.ascontiguousarray(a, dtype=np.float32), b.astype(np.float32), 1.0, EXPERTS)
