"""Combine GGUF LoRA adapters into one GGUF adapter (``edge-lora combine``).

What PEFT's ``add_weighted_adapter`` does in PyTorch, here on GGUF files without torch.
Every adapter ``i`` is read at its user scale ``u_i`` (:func:`edge_lora.lora.adapter.read_gguf_lora`),
which gives each tensor its effective scale ``s_i = u_i * alpha_i / r_i`` (llama.cpp's rule).
The combined weight change of a base tensor is ``D = sum_i s_i * B_i @ A_i``.

- ``cat`` (exact): the factors are stacked along the rank axis, each ``s_i`` folded into its
  B block. Linear ``W`` (out, in): ``A = vstack(A_i)`` (sum r, in), ``B = hstack(s_i * B_i)``
  (out, sum r), so ``B @ A = D``. ``token_embd`` (vocab, hidden): ``A = hstack(A_i)``
  (vocab, sum r), ``B = hstack(s_i * B_i)`` (hidden, sum r), so ``A @ B.T = D``.
- ``svd``: ``D`` truncated to rank ``R`` (Eckart-Young: the best rank-R approximation in
  Frobenius norm), computed without forming ``D``: see :func:`low_rank`.

The output's alpha is 0, so llama.cpp's multiplier is the user's scale alone
(``llama_adapter_lora_weight::get_scale``: ``alpha ? user_scale * alpha / rank : user_scale``):
loading the combined file at scale 1 applies every adapter at the scale it was combined at.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import Keys

from edge_lora.errors import (
    EdgeLoraError,
    InvalidRequestError,
)
from edge_lora.formats.adapter_file import OUTTYPES, OutTensor, pair_tensors, write_adapter
from edge_lora.formats.gguf_file import read_gguf
from edge_lora.formats.keys import CombineKeys, EdgeLoraKeys
from edge_lora.formats.values import F16_MAX
from edge_lora.lora.adapter import LoraSource, read_gguf_lora
from edge_lora.lora.pair import EMBEDDING, EXPERTS, LINEAR, LoraPair, concat
from edge_lora.outputs import check_output
from edge_lora._validate import combined_error, int_problem, is_number

from . import __version__

METHODS = ("cat", "svd")


@dataclass(frozen=True)
class CombineInput:
    """One adapter that went into the combination."""

    label: str  # "json.gguf:0.5"
    path: Path
    scale: float  # the user scale it was combined at
    sha256: str


@dataclass(frozen=True)
class CombinedTensor:
    """One base tensor of the combined adapter.

    ``rank_in`` is the sum of the ranks of the adapters touching it (the ``cat`` rank);
    ``rank`` the rank written. ``rel_error`` is ``||D - D_R||_F / ||D||_F`` for svd (0.0 when
    ``D`` is zero), None for cat (exact)."""

    name: str
    shape: tuple[int, ...]  # the base weight's, numpy order
    sources: tuple[str, ...]  # labels of the adapters touching it
    rank_in: int
    rank: int
    rel_error: float | None


@dataclass(frozen=True)
class CombineResult:
    """What :func:`combine` did (or would do, with ``dry_run``)."""

    out_path: Path | None  # None for a dry run
    arch: str
    method: str
    rank: int | None  # svd's R
    outtype: str
    inputs: tuple[CombineInput, ...]
    tensors: tuple[CombinedTensor, ...]
    notes: tuple[str, ...] = ()

    @property
    def worst(self) -> CombinedTensor | None:
        """The tensor with the largest svd error (None for cat)."""
        errs = [t for t in self.tensors if t.rel_error is not None]
        return max(errs, key=lambda t: t.rel_error or 0.0) if errs else None


def combine(
    adapters: Sequence[str | os.PathLike[str] | tuple[str | os.PathLike[str], float]],
    out: str | os.PathLike[str] | None,
    *,
    method: str = "cat",
    rank: int | None = None,
    outtype: str = "f16",
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> CombineResult:
    """Combine GGUF LoRA adapters, each a path (scale 1.0) or ``(path, user_scale)``, into one
    GGUF adapter ``out`` that applies them all at once at those scales.

    ``method="cat"`` is exact (ranks add up per tensor); ``method="svd"`` needs ``rank`` and
    keeps the best rank-``rank`` approximation of each tensor's combined change, reporting its
    relative error (exact when ``rank`` reaches the combined rank). ``outtype`` is the storage
    type of the written factors. With ``dry_run`` everything is computed and nothing written.

    Raises :class:`InvalidRequestError` (bad method, rank, scale or outtype),
    :class:`OutputExistsError` (``out`` exists without ``overwrite``, or is an input; see
    :func:`edge_lora.outputs.check_output`), and
    :class:`IncompatibleAdapterError` listing every unreadable or invalid adapter, architecture
    and shape mismatch at once (:class:`~edge_lora.errors.GGUFFileError` when missing or broken
    files are the only problem). Nothing is written when anything is raised."""
    specs = [_spec(a) for a in adapters]
    _check_request(specs, out, method, rank, outtype, dry_run)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_output(out_path, inputs=[p for p, _ in specs], overwrite=overwrite, dry_run=dry_run)
    sources = _read_all(specs)
    arch = sources[0].arch
    tensors, meta_rows = _combine_tensors(sources, method, rank)
    _check_range(tensors)
    result = CombineResult(
        out_path=None if dry_run else out_path,
        arch=arch,
        method=method,
        rank=rank,
        outtype=outtype,
        inputs=tuple(CombineInput(s.label, s.path, s.user_scale, s.sha256) for s in sources),
        tensors=tuple(meta_rows),
        notes=tuple(_notes(sources)),
    )
    if dry_run:
        return result
    assert out_path is not None  # _check_request refuses a missing output outside a dry run
    written = write_adapter(out_path, arch, 0.0, tensors, outtype, _provenance(result, sources), progress)
    return replace(result, notes=result.notes + tuple(written))


# --- the math -----------------------------------------------------------------------


def low_rank(
    left: np.ndarray, right: np.ndarray, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Best rank-``rank`` approximation of ``D = left @ right.T`` without forming ``D``.

    ``left`` (m, k), ``right`` (n, k). With ``left = Ql Rl`` and ``right = Qr Rr`` (reduced QR),
    ``D = Ql (Rl Rr^T) Qr^T``; the SVD of the small core ``Rl Rr^T = U S V^T`` gives ``D``'s
    SVD ``(Ql U) S (Qr V)^T``. Cost O((m + n) k^2 + k^3) instead of O(m n min(m, n)).

    Returns ``(u (m, R), s (R,), v (n, R), rel_error)`` with ``D_R = u * s @ v.T``,
    ``R = min(rank, singular values)`` and ``rel_error = ||D - D_R||_F / ||D||_F =
    sqrt(sum of the discarded s^2 / sum of all s^2)`` (0.0 when D is zero). Float64."""
    ql, rl = np.linalg.qr(np.asarray(left, dtype=np.float64))
    qr_, rr = np.linalg.qr(np.asarray(right, dtype=np.float64))
    u, s, vt = np.linalg.svd(rl @ rr.T, full_matrices=False)
    keep = min(rank, s.size)
    energy = s * s
    total = float(energy.sum())
    rel = math.sqrt(float(energy[keep:].sum()) / total) if total > 0 else 0.0
    return ql @ u[:, :keep], s[:keep], qr_ @ vt[:keep].T, rel


def svd_pair(pair: LoraPair, rank: int) -> tuple[LoraPair, float]:
    """``pair`` (scale folded: 1) compressed to rank ``rank``, the singular values folded into
    B: ``(pair, rel_error)``, float32. Linear ``D = b @ a`` (out, in); embedding ``D = a @ b.T``
    (vocab, hidden); experts each expert's own (:func:`_svd_experts`)."""
    if pair.layout == EMBEDDING:
        u, s, v, rel = low_rank(pair.a, pair.b, rank)
        a_r, b_r = u, v * s
    elif pair.layout == LINEAR:
        u, s, v, rel = low_rank(pair.b, pair.a.T, rank)
        a_r, b_r = v.T, u * s
    elif pair.layout == EXPERTS:
        a_r, b_r, rel = _svd_experts(pair, rank)
    else:
        raise InvalidRequestError(f"svd of {pair.layout} LoRA is not supported; combine with --method cat")
    return replace(pair, a=np.ascontiguousarray(a_r, dtype=np.float32), b=np.ascontiguousarray(b_r, dtype=np.float32)), rel


def _svd_experts(pair: LoraPair, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Each expert's ``D_e = b[e] @ a[e]`` compressed to rank ``rank`` on its own (:func:`low_rank`),
    zero-padded to one rank (exact: llama.cpp takes one rank per tensor). The relative error is
    over all experts: ``sqrt(sum_e discarded_e / sum_e ||D_e||^2)``, each ``||D_e||_F^2`` from the
    factors (``sum((B^T B) * (A A^T))``, no (out, in) product formed)."""
    parts = [low_rank(pair.b[e], pair.a[e].T, rank) for e in range(pair.a.shape[0])]
    keep = max(u.shape[1] for u, _, _, _ in parts)
    a_r = np.zeros((len(parts), keep, pair.a.shape[2]))
    b_r = np.zeros((len(parts), pair.b.shape[1], keep))
    lost = total = 0.0
    for e, (u, s, v, rel) in enumerate(parts):
        a_r[e, : u.shape[1]], b_r[e, :, : u.shape[1]] = v.T, u * s
        b64, a64 = pair.b[e].astype(np.float64), pair.a[e].astype(np.float64)
        energy = float(np.sum((b64.T @ b64) * (a64 @ a64.T)))
        lost, total = lost + rel * rel * energy, total + energy
    return a_r, b_r, math.sqrt(lost / total) if total > 0 else 0.0


# --- the steps ----------------------------------------------------------------------


def _spec(adapter: object) -> tuple[Path, float]:
    if isinstance(adapter, tuple):
        path, scale = adapter
        return Path(path), float(scale) if isinstance(scale, (int, float)) else math.nan
    return Path(adapter), 1.0  # type: ignore[arg-type]


def _check_request(
    specs: list[tuple[Path, float]], out: object, method: str, rank: int | None, outtype: str, dry_run: bool
) -> None:
    problems: list[str] = []
    if not specs:
        problems.append("no adapters given")
    for path, scale in specs:
        if not is_number(scale):
            problems.append(f"{path}: scale {scale!r} is not a finite number")
    if method not in METHODS:
        problems.append(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    elif method == "svd" and rank is None:
        problems.append("svd needs a rank (--rank R): the rank each tensor is compressed to")
    elif method == "cat" and rank is not None:
        problems.append("--rank is for svd; cat keeps every adapter's rank (their sum)")
    if rank is not None and int_problem("rank", rank, lo=1):
        problems.append(str(int_problem("rank", rank, lo=1)))
    if outtype not in OUTTYPES:
        problems.append(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if out is None and not dry_run:
        problems.append("no output file given (-o OUT.gguf)")
    if problems:
        raise InvalidRequestError("cannot combine", problems)


def _read_all(specs: list[tuple[Path, float]]) -> list[LoraSource]:
    """Every adapter read (dequantized to float32, checked); every problem, unreadable files,
    architecture and shape mismatches, raised at once."""
    sources: list[LoraSource] = []
    errors: list[EdgeLoraError] = []
    for path, scale in specs:
        try:
            sources.append(read_gguf_lora(path, scale=scale))
        except EdgeLoraError as exc:
            errors.append(exc)
    mismatches = _mismatches(sources) + [p for s in sources if (p := s.alora_problem("combined with others"))]
    if errors or mismatches:
        raise combined_error("cannot combine these adapters", errors, mismatches)
    return sources


def _mismatches(sources: list[LoraSource]) -> list[str]:
    problems: list[str] = []
    archs = {s.arch for s in sources}
    if len(archs) > 1:
        listing = ", ".join(f"{s.label} is {s.arch!r}" for s in sources)
        problems.append(f"the adapters are for different architectures: {listing}")
    shapes: dict[str, dict[tuple[int, ...], list[str]]] = {}
    for s in sources:
        for name, w in s.weights.items():
            shapes.setdefault(name, {}).setdefault(w.weight_shape, []).append(s.label)
    for name, by_shape in shapes.items():
        if len(by_shape) > 1:
            listing = "; ".join(f"{shape} from {', '.join(labels)}" for shape, labels in by_shape.items())
            problems.append(f"{name}: the adapters imply different base weight shapes: {listing}")
    return problems


def _combine_tensors(
    sources: list[LoraSource], method: str, rank: int | None
) -> tuple[list[OutTensor], list[CombinedTensor]]:
    names: dict[str, None] = {}  # first-appearance order
    for s in sources:
        names.update(dict.fromkeys(s.weights))
    out: list[OutTensor] = []
    rows: list[CombinedTensor] = []
    for name in names:
        touching = [s for s in sources if name in s.weights]
        weights = [s.weights[name] for s in touching]
        pair = concat(weights)  # exact: ranks add up, each scale folded into its B block
        rel: float | None = None
        if method == "svd":
            assert rank is not None
            pair, rel = svd_pair(pair, rank)
        out += pair_tensors({name: pair})
        rows.append(CombinedTensor(name, weights[0].weight_shape, tuple(s.label for s in touching),
                                   sum(w.rank for w in weights), pair.rank, rel))
    return out, rows


def _check_range(tensors: list[OutTensor]) -> None:
    """Scales folded into B can push it beyond the f16 range, which the runtime refuses."""
    problems = []
    for t in tensors:
        big = int(np.count_nonzero(np.abs(t.data) > F16_MAX))
        if big:
            problems.append(f"{t.name}: {big} values beyond ±65504 once the scales are folded in")
    if problems:
        raise InvalidRequestError("the scales are too large: llama.cpp's f16 paths would overflow", problems)


def _notes(sources: list[LoraSource]) -> list[str]:
    notes = []
    if len(sources) == 1:
        notes.append("one adapter: the output is a copy of it at the given scale")
    notes += [f"{s.label}: scale 0, it adds nothing" for s in sources if s.user_scale == 0]
    return notes


def _provenance(result: CombineResult, sources: list[LoraSource]) -> dict[str, object]:
    base_models = {str(read_gguf(s.path).metadata.get(EdgeLoraKeys.BASE_MODEL, "")) for s in sources}
    meta: dict[str, object] = {
        Keys.General.NAME: " + ".join(s.label for s in sources),
        EdgeLoraKeys.SOURCE_FORMAT: "gguf",
        EdgeLoraKeys.BASE_MODEL: base_models.pop() if len(base_models) == 1 else "",
        EdgeLoraKeys.RANKS: sorted({t.rank for t in result.tensors}),
        EdgeLoraKeys.CONVERTER_VERSION: f"edge-lora {__version__}",
        EdgeLoraKeys.SCALES_FOLDED: True,
        CombineKeys.COMBINED_FROM: [
            json.dumps({"name": i.path.name, "scale": i.scale, "sha256": i.sha256}) for i in result.inputs
        ],
        CombineKeys.METHOD: result.method,
    }
    if result.method == "svd":
        worst = result.worst
        meta[CombineKeys.RANK] = int(result.rank or 0)
        meta[CombineKeys.MAX_REL_ERROR] = float(worst.rel_error or 0.0) if worst else 0.0
    return meta
