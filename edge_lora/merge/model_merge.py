"""``edge_lora.merge``: bake LoRA (and DoRA) adapters into a GGUF base.

Only the tensors an adapter touches are dequantized, merged in float32 and
re-encoded (by default in their own type, through ggml's quantizer); every other
tensor and all metadata are copied byte for byte, so a merged Q4_K_M file is the
base's size and runs at the base's speed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, Keys
from gguf.quants import dequantize

from .. import __version__
from ..outputs import atomic_path, check_output
from ..families.base_check import base_problems
from .._validate import combined_error, int_problem, is_int, is_number
from ..errors import (
    EdgeLoraError,
    GGUFFileError,
    IncompatibleAdapterError,
    InvalidRequestError,
    OutputPathError,
)
from ..formats.values import F16_MAX
from ..families import adapter_archs, family_for
from ..formats.gguf_file import GGUFInfo, read_gguf, require_base
from ..formats.keys import EdgeLoraKeys
from ..lora.dora import apply_dora
from ..formats.gguf_copy import Replacement, write_model_copy
from ..lora.adapter import LoraSource, read_gguf_lora, read_tensor_f32
from ..lora.compat import tied_embedding_problem
from .calibrate import Calibrator, layer_groups
from .gptq import gptq_encode
from .tensor_types import check_outtype, encode, row_bytes, target_type, unmergeable_reason

#: how merged weights of quantized types are re-encoded (see merge())
REQUANT = ("gptq", "nearest")
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)

#: an adapter to merge: a GGUF adapter path (scale 1), (path, scale), or a LoraSource
#: (``edge_lora_convert.lora_source`` reads PEFT/MLX checkpoints, DoRA included, into one)
AdapterArg = Union[str, os.PathLike, tuple, LoraSource]


@dataclass(frozen=True)
class MergedTensor:
    """One touched tensor: the adapters that touch it, its type before and after."""

    name: str
    base_type: str
    out_type: str
    adapters: tuple[str, ...]
    dora: bool
    note: str | None = None
    #: quantized types: ||(Q - T) X|| / ||(T - W) X|| on the calibration inputs X, how much of the
    #: adapters' change to this layer's output the requantized weight Q misses (T: the exact
    #: merged weight, W: the base's); None when not measured (float types, nearest without calibration)
    change_lost: float | None = None


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge` did (or, with ``dry_run``, would do). Sizes in bytes."""

    out_path: Path | None
    base_path: Path
    adapters: tuple[str, ...]
    outtype: str
    tensors: tuple[MergedTensor, ...]
    copied: int  # tensors copied byte for byte
    base_size: int
    out_size: int  # planned tensor bytes + the base's metadata size
    seconds: float
    notes: tuple[str, ...] = field(default=())
    requant: str = "gptq"
    calibration: str | None = None  # what the calibration tokens were, and how many


def merge(
    base: str | os.PathLike[str],
    adapters: Sequence[AdapterArg],
    out: str | os.PathLike[str] | None = None,
    *,
    outtype: str = "same",
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    threads: int | None = None,
    requant: str = "gptq",
    calibration: str | None = None,
) -> MergeResult:
    """Merge ``adapters`` into the GGUF model ``base`` and write ``out`` atomically.

    Per touched weight ``W`` (dequantized, float32), in the order given:
    LoRA ``W += s * B @ A`` (``s``: llama.cpp's ``user_scale * alpha / rank``, so the merged
    model equals the hot adapters at those scales); DoRA ``W = m / ||W + s B A||_row * (W + s B A)``
    (:mod:`.dora`). ``outtype``: ``same`` (each tensor keeps its type) or a ggml type name
    (:data:`.tensor_types.OUTTYPES`); blocks that do not fit fall back as llama.cpp's quantizer does.

    ``requant``: how merged weights of quantized types are re-encoded. ``gptq`` (default): the
    base runs with the adapters hot over calibration tokens (``calibration`` text, else the hot
    model's own answers to varied requests, :mod:`.calibrate`) and each weight is quantized to
    keep its output on those inputs (:mod:`.gptq`); ``nearest``: ggml's quantizer alone, which
    loses most of a change smaller than half a quantization step. Float types are exact either way.

    Raises, listing every problem at once: :class:`GGUFFileError` (unreadable base),
    :class:`IncompatibleAdapterError` (adapters that do not fit the base),
    :class:`InvalidRequestError` (bad options, a directory without the converter),
    :class:`OutputExistsError` / :class:`OutputPathError`; :class:`InvalidRequestError` when a merged weight
    overflows its type (nothing is written)."""
    t0 = time.perf_counter()
    want = check_outtype(outtype)
    if requant not in REQUANT:
        raise InvalidRequestError(f"requant {requant!r}: one of {', '.join(REQUANT)}")
    if calibration is not None and requant != "gptq":
        raise InvalidRequestError("calibration text is only used by requant='gptq'")
    if threads is not None and int_problem("threads", threads, lo=1, hi=512):
        raise InvalidRequestError(str(int_problem("threads", threads, lo=1, hi=512)), param="threads")
    if isinstance(adapters, (str, os.PathLike, LoraSource)):
        raise InvalidRequestError("adapters must be a list, e.g. [\"sql.gguf\", (\"tone.gguf\", 0.5)]")
    info = read_gguf(base)
    require_base(info)
    bad = base_problems(info)
    align = info.metadata.get(Keys.General.ALIGNMENT, 32)
    if not is_int(align) or align <= 0 or align & (align - 1):
        bad.append(f"general.alignment {align!r} is not a power of two (llama.cpp refuses the file)")
    if bad:
        raise GGUFFileError(f"{info.path}: a base llama.cpp cannot run; merging into it would not help", bad)
    sources = _read_sources(adapters, info)
    plan, notes = _plan(sources, info, want)
    out_path = _check_out(out, info, sources, overwrite, dry_run)
    quantized = [n for n, (t, _) in plan.items() if t not in FLOAT_TYPES]
    gptq = bool(quantized) and requant == "gptq" and not dry_run
    if calibration is not None and not quantized:
        notes.append("--calibration was not used: every touched tensor is written in a float type, exactly")
    if gptq and progress and sys.stderr.isatty():
        print(f"calibrating GPTQ for {len(quantized)} quantized tensors: the base runs with the adapters hot...",
              file=sys.stderr, flush=True)
    calib = Calibrator(info, sources, text=calibration, n_threads=threads) if gptq else None
    groups = layer_groups(quantized, {n: info.tensors[n].shape[-1] for n in quantized})
    lost: dict[str, float] = {}
    unseen: list[str] = []
    replacements = {
        name: Replacement(t, _n_bytes(info, name, t),
                          _maker(info, name, t, sources, threads, (calib, groups) if name in quantized else None,
                                 lost, unseen))
        for name, (t, _) in plan.items()
    }
    out_size = info.file_size + sum(r.n_bytes - info.tensors[n].n_bytes for n, r in replacements.items())
    try:
        if out_path is not None and not dry_run:
            fields = _provenance(info, sources, outtype, requant)
            try:
                with atomic_path(out_path) as tmp:
                    write_model_copy(info, tmp, replacements, fields, progress=progress)
            except OSError as exc:
                raise OutputPathError(f"{out_path}: could not be written ({exc}); nothing was written") from exc
            out_size = out_path.stat().st_size
    finally:
        if calib is not None:
            calib.close()
    tensors = tuple(
        MergedTensor(name, info.tensors[name].type_name, t.name,
                     tuple(s.label for s in sources if name in s.weights),
                     any(s.weights[name].magnitude is not None for s in sources if name in s.weights), note,
                     lost.get(name))
        for name, (t, note) in plan.items()
    )
    notes += _loss_notes(tensors)
    if unseen:
        notes.append(f"{len(unseen)} quantized tensors never saw a calibration input (llama.cpp does not multiply "
                     f"them as matrices: {', '.join(unseen[:4])}{'...' if len(unseen) > 4 else ''}): rounded to nearest")
    return MergeResult(
        requant=requant, calibration=f"{len(calib.tokens)} tokens of {calib.source}" if calib else None,
        out_path=None if dry_run else out_path, base_path=info.path, adapters=tuple(s.label for s in sources),
        outtype=outtype, tensors=tensors, copied=len(info.tensors) - len(plan), base_size=info.file_size,
        out_size=out_size, seconds=time.perf_counter() - t0, notes=tuple(notes),
    )


def _read_sources(adapters: Sequence[AdapterArg], info: GGUFInfo) -> list[LoraSource]:
    if not adapters:
        raise InvalidRequestError("no adapters to merge")
    sources: list[LoraSource] = []
    errors: list[EdgeLoraError] = []
    problems: list[str] = []
    for item in adapters:
        try:
            if isinstance(item, LoraSource):
                problems += [f"{item.label}: {p}" for p in source_problems(item, info)]
                sources.append(item)
                continue
            path, scale = (item if isinstance(item, tuple) else (item, 1.0))
            if Path(path).is_dir() or Path(path).suffix.lower() != ".gguf":
                raise InvalidRequestError(
                    f"{path}: not a GGUF adapter; read a PEFT/MLX checkpoint with "
                    "edge_lora_convert.lora_source(path, base=...) (the `edge-lora merge` command does this)")
            if not is_number(scale):
                raise InvalidRequestError(f"{path}: scale {scale!r} is not a finite number")
            sources.append(read_gguf_lora(path, scale=float(scale), base=info, label=f"{Path(path).name}:{scale:g}",
                                          archs=adapter_archs(info.architecture)))
        except (IncompatibleAdapterError, GGUFFileError, InvalidRequestError) as exc:
            errors.append(exc)
    problems += [p for s in sources if (p := s.alora_problem("merged into the base"))]
    if errors or problems:
        raise combined_error(f"cannot merge into {info.path.name}", errors, problems)
    for s in sources:  # a weight change beyond what f16 holds is no trained adapter's (and overflows)
        for name, w in s.weights.items():
            big = float(np.abs(w.b).max(initial=0.0)) * abs(w.scale) * float(np.abs(w.a).max(initial=0.0)) * w.rank
            if not math.isfinite(big) or big > F16_MAX:
                problems.append(f"{s.label}: {name}: scale × factors reach {big:.3g}, beyond ±65504: lower the scale")
    if problems:
        raise InvalidRequestError(f"cannot merge into {info.path.name}", problems)
    return sources


def source_problems(src: LoraSource, info: GGUFInfo) -> list[str]:
    """Why a LoraSource does not fit the base ``info`` (shapes in numpy order)."""
    if src.arch not in adapter_archs(info.architecture):
        return [f"architecture {src.arch!r} does not match the base's {info.architecture!r}"]
    problems: list[str] = []
    for name, w in sorted(src.weights.items()):
        t = info.tensors.get(name)
        problem = f"{name}: the base has no such tensor" if t is None else w.fits(name, t.shape)
        if problem:
            problems.append(problem)
    tied = None if src.ties_output else tied_embedding_problem(src.weights, info)
    if tied:
        problems.append(f"{tied}: merging it would change the output layer too")
    return problems


def _plan(sources: list[LoraSource], info: GGUFInfo, want: GGMLQuantizationType | None
          ) -> tuple[dict[str, tuple[GGMLQuantizationType, str | None]], list[str]]:
    touched = sorted({n for s in sources for n in s.weights}, key=list(info.tensors).index)
    plan: dict[str, tuple[GGMLQuantizationType, str | None]] = {}
    problems: list[str] = []
    notes: list[str] = []
    for name in touched:
        base_type = GGMLQuantizationType[info.tensors[name].type_name]
        reason = unmergeable_reason(base_type, want)
        if reason:
            problems.append(f"{name} ({base_type.name}): {reason}")
            continue
        t, note = target_type(base_type, want, info.tensors[name].shape[-1])
        plan[name] = (t, note)
        if note:
            notes.append(f"{name}: {note}")
    if problems:
        raise InvalidRequestError(f"cannot merge into {info.path.name}", problems)
    return plan, notes


def _check_out(out: str | os.PathLike[str] | None, info: GGUFInfo, sources: list[LoraSource],
               overwrite: bool, dry_run: bool) -> Path | None:
    if out is None:
        if dry_run:
            return None
        raise InvalidRequestError("no output path: pass out= (-o OUT.gguf)")
    return check_output(out, inputs=[info.path] + [s.path for s in sources], overwrite=overwrite, dry_run=dry_run)


def _n_bytes(info: GGUFInfo, name: str, t: GGMLQuantizationType) -> int:
    shape = info.tensors[name].shape
    return int(np.prod(shape[:-1])) * row_bytes(t, shape[-1])


def _output_scale(info: GGUFInfo, name: str) -> np.ndarray | None:
    """The per-expert scale llama.cpp applies to ``name``'s product before adding its LoRA
    (:meth:`~edge_lora.families.base.Family.lora_output_scale`), float32 (E,); None when there is none."""
    family = family_for(info.architecture)
    scale_name = family.lora_output_scale(name) if family is not None else None
    if scale_name is None or scale_name not in info.tensors:
        return None
    return read_tensor_f32(np.memmap(info.path, dtype=np.uint8, mode="r"), info.tensors[scale_name]).reshape(-1)


def _maker(info: GGUFInfo, name: str, t: GGMLQuantizationType, sources: list[LoraSource], threads: int | None,
           gptq: tuple[Calibrator | None, list[list[str]]] | None, lost: dict[str, float], unseen: list[str]):
    def make() -> np.ndarray:
        shape = info.tensors[name].shape
        w0 = w = read_tensor_f32(np.memmap(info.path, dtype=np.uint8, mode="r"), info.tensors[name])
        if not np.isfinite(w0).all():
            raise GGUFFileError(f"{info.path}: the base's {name} holds NaN or infinite values: no merge can be right")
        scale = _output_scale(info, name)
        for s in sources:
            lw = s.weights.get(name)
            if lw is None:
                continue
            # llama.cpp adds this LoRA after a per-expert scale of W's product (Gemma 4's
            # ffn_down_exps.scale): merged into W it is divided by that scale
            w = w + (lw.delta() if scale is None else lw.delta() / scale[:, None, None])
            if lw.magnitude is not None:
                w = apply_dora(w, lw.magnitude)
        # f16 and the quantized types (f16 block scales) hold at most ±65504, and llama.cpp's f16
        # paths overflow beyond it whatever the storage: no trained model has such weights
        bad = ~(np.abs(w) <= F16_MAX)
        if bad.any():
            raise InvalidRequestError(
                f"{name}: {int(bad.sum())} merged values are NaN, infinite or beyond ±65504: the adapters' "
                "scales overflow the weight; lower the scale (nothing was written)")
        target = w.reshape(-1, shape[-1])
        calib, groups = gptq if gptq is not None else (None, [])
        h = calib.h_for(name, groups) if calib is not None else None
        if h is None:
            if calib is not None:
                unseen.append(name)
            return encode(target, t, threads=threads)
        if not np.isfinite(h).all():
            raise InvalidRequestError(f"{name}: the calibration inputs hold NaN or infinite values (a broken base?); "
                                      "merge with --requant nearest")
        try:
            u = calib.factor(h)
        except np.linalg.LinAlgError as exc:
            raise InvalidRequestError(f"{name}: GPTQ could not factor the calibration inputs ({exc}); "
                                      "pass more --calibration text, or --requant nearest") from exc
        data = gptq_encode(target, u, t, threads=threads)
        q = np.asarray(dequantize(data, t), dtype=np.float32).reshape(target.shape)
        lost[name] = output_error(q - target, target - w0.reshape(target.shape), h)
        return data

    return make


def output_error(err: np.ndarray, change: np.ndarray, h: np.ndarray) -> float:
    """``||err X|| / ||change X||`` for inputs of second moment ``h = X^T X`` (``tr(E H E^T)``)."""
    den = float(np.einsum("ij,ij->", change @ h, change))
    return math.sqrt(max(float(np.einsum("ij,ij->", err @ h, err)), 0.0) / den) if den > 0 else 0.0


def _loss_notes(tensors: tuple[MergedTensor, ...]) -> list[str]:
    measured = [t for t in tensors if t.change_lost is not None]
    if not measured:
        return []
    mean = sum(t.change_lost for t in measured) / len(measured)
    worst = max(measured, key=lambda t: t.change_lost)
    note = (f"requantized {len(measured)} tensors: on the calibration inputs they miss {mean:.0%} of the adapters' "
            f"change to their outputs on average (worst {worst.name} {worst.out_type}: {worst.change_lost:.0%})")
    if mean > 0.6:
        note += ("; the change is small against these types' quantization steps: --outtype q8_0 keeps it "
                 "(larger file), or pass text like your training data as --calibration")
    return [note]


def _provenance(info: GGUFInfo, sources: list[LoraSource], outtype: str, requant: str
                ) -> dict[str, tuple[object, GGUFValueType, GGUFValueType | None]]:
    prior = info.metadata.get(EdgeLoraKeys.MERGED_ADAPTERS)
    entries = [str(e) for e in prior] if isinstance(prior, list) else []  # a merge of a merged model
    entries += [json.dumps({"name": s.path.name, "label": s.label, "scale": s.user_scale, "sha256": s.sha256,
                            "format": s.source_format, "dora": s.is_dora}, sort_keys=True) for s in sources]
    return {
        EdgeLoraKeys.MERGED_ADAPTERS: (entries, GGUFValueType.ARRAY, GGUFValueType.STRING),
        EdgeLoraKeys.MERGE_OUTTYPE: (outtype, GGUFValueType.STRING, None),
        EdgeLoraKeys.MERGE_REQUANT: (requant, GGUFValueType.STRING, None),
        EdgeLoraKeys.MERGED_BY: (f"edge-lora {__version__}", GGUFValueType.STRING, None),
    }
