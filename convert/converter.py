"""Plan and write a conversion: checkpoint modules -> checked, transformed GGUF tensors."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_TENSOR, GGUFValueType, Keys, TensorNameMap

from edge_lora.errors import ConversionError, IncompatibleAdapterError
from edge_lora._validate import F16_MAX, f16_problem
from edge_lora.formats.gguf_file import OUTPUT_TENSOR, TOKEN_EMBD_TENSOR, GGUFInfo, read_gguf, require_base
from edge_lora.formats.adapter_file import OUTTYPES, GGUFArray, pair_tensors, write_adapter
from edge_lora.formats.keys import EdgeLoraKeys
from edge_lora.lora.pair import EMBEDDING, LINEAR, LoraPair
from edge_lora.families import Family, family_for
from edge_lora.families.registry import family_named_in, unsupported_reason
from edge_lora.lora.adapter import read_tensor_f32
from edge_lora.lora.scales import b_fold_factor
from edge_lora.outputs import check_output

from . import __version__
from .checkpoint import Checkpoint, LoraModule, read_checkpoint
from .expert_params import param_pairs
from .experts import expert_pairs
from .packing import fused_expert_part_shapes, pack_parts


#: every Hugging Face name gguf-py knows for an output (lm_head) layer
OUTPUT_MODULE_NAMES: frozenset[str] = frozenset(TensorNameMap.mappings_cfg[MODEL_TENSOR.OUTPUT])


@dataclass(frozen=True)
class BaseShape:
    """What the converter needs of the base: from a GGUF base, or guessed when unchecked."""

    spec: Family
    n_layers: int
    n_head: int | None
    n_head_kv: int | None
    n_embd: int | None
    tensors: dict[str, tuple[int, ...]] | None  # None: unchecked (--arch without --base)
    #: the base's arch hyperparameter by key template (``Keys.SSM.GROUP_COUNT``); None without a base
    value: Callable[[str], Any] | None = None
    #: a base tensor's values, float32 (for the few transforms that need them); None without a base
    read: Callable[[str], np.ndarray] | None = None

    def heads_at(self, layer: int | None) -> tuple[int | None, int | None]:
        """(head count, KV head count) of block ``layer`` (per-layer arrays: hybrid models have 0 KV
        heads on recurrent layers); the first layer's when ``layer`` is None."""
        if self.value is None:
            return self.n_head, self.n_head_kv
        return (_layer_int(self.value(Keys.Attention.HEAD_COUNT), layer or 0),
                _layer_int(self.value(Keys.Attention.HEAD_COUNT_KV), layer or 0))


@dataclass
class ConvertResult:
    out_path: Path | None
    arch: str
    alpha: float
    source_format: str
    modules: int
    tensors: list[tuple[str, tuple[int, ...]]]
    checked_against_base: bool
    notes: list[str] = field(default_factory=list)


#: how hub names mark a bitsandbytes 4-bit base (Unsloth's ``-bnb-4bit``, others' ``bnb_4bit`` / ``4bit-bnb``)
_BNB_4BIT = re.compile(r"bnb[-_]?4bit|4bit[-_]bnb|[-_]nf4(?:$|[-_])", re.IGNORECASE)


def quantized_base_note(base_model: str) -> str | None:
    """A note when ``base_model_name_or_path`` names a bitsandbytes 4-bit base (QLoRA)."""
    if not _BNB_4BIT.search(base_model):
        return None
    return (f"base_model_name_or_path {base_model!r} is a bitsandbytes 4-bit base: the adapter was trained against "
            "NF4-rounded weights, and a GGUF base quantizes the original weights differently, so outputs differ a "
            "little from the training setup (as with any QLoRA adapter on another quantization); convert the "
            "original (16-bit) model to GGUF as the base")


def convert(
    adapter: str | Path,
    *,
    base: str | Path | None = None,
    arch: str | None = None,
    out: str | Path | None = None,
    outtype: str = "f16",
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    adapter_name: str | None = None,
    text_only: bool = False,
) -> ConvertResult:
    """Convert a PEFT or MLX-LM adapter (folder, config or weights file) to a GGUF LoRA adapter.

    ``base`` (a GGUF base, quantized or not) gives the architecture, layer count
    and every tensor shape, and each adapter tensor is checked against it. Without
    it, ``arch`` converts unchecked. ``adapter_name`` picks one of several PEFT adapter
    names in one file; ``text_only`` drops the vision/audio towers of a multimodal
    checkpoint. Every problem is collected and raised at once as :class:`ConversionError`;
    nothing is written then.
    """
    if outtype not in OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    base_info = read_gguf(base) if base is not None else None
    vocab = base_info.tensors[TOKEN_EMBD_TENSOR].shape[0] if base_info and TOKEN_EMBD_TENSOR in base_info.tensors else None
    ckpt = read_checkpoint(adapter, adapter_name=adapter_name, text_only=text_only, base_vocab=vocab)
    shape = _base_shape(ckpt, base_info, arch)
    problems: list[str] = []
    notes: list[str] = list(ckpt.notes)
    quantized = quantized_base_note(str(ckpt.provenance.get("base_model") or ""))
    if quantized:
        notes.append(quantized)
    out_tensors = pair_tensors(_plan(ckpt, shape, problems, notes))
    tokens = ckpt.provenance.get("alora_invocation_tokens") or []
    if tokens:
        if vocab is not None and max(tokens) >= vocab:
            problems.append(f"alora_invocation_tokens {tokens}: id {max(tokens)} is beyond the base's {vocab} tokens "
                            "(tokenized for another model?)")
        notes.append(f"an activated LoRA (aLoRA) invoked by tokens {tokens}: written as "
                     f"{Keys.Adapter.ALORA_INVOCATION_TOKENS}: edge-lora's runtime and llama.cpp's server apply it "
                     "from the invocation on (it cannot be merged)")
    alpha_problem = f16_problem("the file's alpha", ckpt.alpha)
    if alpha_problem:
        problems.append(f"{alpha_problem}: the runtime refuses such adapters")
    for t in out_tensors:  # per-module scales folded into B can push it out of range
        big = int(np.count_nonzero(np.abs(t.data) > F16_MAX))
        if big:
            problems.append(f"{t.name}: {big} values beyond ±65504 after folding the per-module scale into B: "
                            "the f16 paths of llama.cpp would overflow (the adapter's scales are not plausible)")
    if problems:
        raise ConversionError(f"{ckpt.path}: cannot convert to a {shape.spec.name} GGUF adapter", problems)
    if shape.tensors is None:
        notes.insert(0, "unchecked: no --base given, tensor shapes were not checked against a base model")
    out_path = check_output(out if out is not None else default_output(ckpt.path),
                            inputs=[ckpt.path] + ([base] if base is not None else []), overwrite=overwrite,
                            dry_run=dry_run)
    result = ConvertResult(
        out_path=None if dry_run else out_path,
        arch=shape.spec.name,
        alpha=ckpt.alpha,
        source_format=ckpt.format,
        modules=len(ckpt.modules),
        tensors=[(t.name, tuple(t.data.shape)) for t in out_tensors],
        checked_against_base=shape.tensors is not None,
        notes=notes,
    )
    if not dry_run:
        meta = _provenance(ckpt, shape)
        result.notes += write_adapter(out_path, shape.spec.name, ckpt.alpha, out_tensors, outtype, meta, progress)
    return result


def default_output(adapter_dir: Path) -> Path:
    """``my-adapter/`` -> ``my-adapter.gguf`` beside it."""
    return adapter_dir.parent / f"{adapter_dir.name}.gguf"


def _base_shape(ckpt: Checkpoint, info: GGUFInfo | None, arch: str | None) -> BaseShape:
    if info is None:
        if arch is None:
            raise ConversionError("give --base BASE.gguf (recommended) or --arch NAME to convert unchecked")
        spec = _spec_or_error(arch)
        layers = [spec.layer_of(m.module) for m in ckpt.modules]
        n_layers = max([i for i in layers if i is not None], default=-1) + 1
        return BaseShape(spec, n_layers, None, None, None, None)
    require_base(info)
    spec = _spec_or_error(info.architecture)
    if arch is not None and _spec_or_error(arch) is not spec:
        raise IncompatibleAdapterError(f"--arch {arch} contradicts the base's architecture {info.architecture}")
    return BaseShape(
        spec,
        int(info.arch_value(Keys.LLM.BLOCK_COUNT, 0)),
        _first_int(info.arch_value(Keys.Attention.HEAD_COUNT)),
        _first_int(info.arch_value(Keys.Attention.HEAD_COUNT_KV)),
        _first_int(info.arch_value(Keys.LLM.EMBEDDING_LENGTH)),
        {name: t.shape for name, t in info.tensors.items()},
        info.arch_value,
        lambda name: read_tensor_f32(np.memmap(info.path, dtype=np.uint8, mode="r"), info.tensors[name]),
    )


def _spec_or_error(name: str) -> Family:
    spec = family_for(name)
    if spec is None:
        raise ConversionError(unsupported_reason(name))
    return spec


def _layer_int(value: object, layer: int) -> int | None:
    if isinstance(value, list):
        value = value[layer] if layer < len(value) else None
    return int(value) if isinstance(value, (int, float)) else None


def _first_int(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) else None


def _plan(ckpt: Checkpoint, shape: BaseShape, problems: list[str], notes: list[str], *,
          merging: bool = False) -> dict[str, LoraPair]:
    """The adapter's pairs by GGUF tensor name, in GGUF layout: each module's scale folded into B
    for llama.cpp's rule (the file's alpha over the tensor's rank), rows transformed like the
    base's; a DoRA module keeps its magnitude ``m``, its rows transformed the same way.
    ``merging``: for a merge, where an embedding LoRA the trainer tied to the output too
    (``ckpt.ties_output``) goes into ``token_embd``, which a tied base's output is."""
    out: dict[str, LoraPair] = {}
    seen: dict[str, str] = {}
    unmapped: list[str] = []
    spec = shape.spec
    packs: dict[str, tuple[tuple[str, ...], dict[int, tuple[str, LoraPair]]]] = {}
    experts = [m for m in ckpt.modules if spec.expert_of(m.module) is not None]
    params = [m for m in ckpt.modules if m.parameters]
    parts = fused_expert_part_shapes(shape.tensors) if shape.tensors is not None else None
    stacked = {**expert_pairs(experts, spec, max(shape.n_layers, 1), ckpt.alpha, parts, problems, notes),
               **param_pairs(params, spec, max(shape.n_layers, 1), ckpt.alpha, parts, problems)}
    for gname, (pair, modules) in stacked.items():
        seen[gname] = modules[0]
        pair = _after_output_scale(spec, gname, pair, shape, problems)
        fused = spec.packed_into(gname, shape.tensors) if shape.tensors is not None else None
        if fused is not None:  # a fused base (--fuse-gate-up-exps): packed below, at llama.cpp's scale
            packs.setdefault(fused[0], (fused[1], {}))[1][fused[2]] = (modules[0], pair)
            continue
        out[gname] = pair
    for mod in ckpt.modules:
        if mod.parameters or spec.expert_of(mod.module) is not None:
            continue  # stacked above
        parts = spec.split_targets(mod.module, shape.tensors or {})
        if parts is not None:  # one module the base converter split by rows (Granite 4's shared_mlp.input_linear)
            for gname, pair in _split_pairs(ckpt, mod, parts, shape, problems).items():
                seen[gname], out[gname] = mod.module, pair
            continue
        target = _target(ckpt, mod, shape, problems, unmapped, merging)
        if target is None:
            continue
        ttype, gname = target
        if gname in seen:
            problems.append(f"{mod.module}: maps to {gname}, already used by {seen[gname]}")
            continue
        seen[gname] = mod.module
        fused = spec.packed_into(gname, shape.tensors) if shape.tensors is not None else None
        pair = _pair(ckpt, mod, ttype, gname, shape, problems, check_shape=fused is None)
        if pair is None:
            continue
        if fused is not None:  # a fused base (--fuse-qkv): packed below
            packs.setdefault(fused[0], (fused[1], {}))[1][fused[2]] = (mod.module, pair)
            continue
        out[gname] = pair
        if shape.tensors is not None and mod.rank > min(shape.tensors[gname]):
            notes.append(f"{mod.module}: rank {mod.rank} exceeds min(in, out) = {min(shape.tensors[gname])} of {gname}; "
                         "the extra rank adds nothing")
    for fused_name, (part_names, parts) in packs.items():
        pair = pack_parts(fused_name, part_names, parts, shape.tensors, ckpt.alpha, problems)  # type: ignore[arg-type]
        if pair is not None:
            out[fused_name] = pair
    if packs:
        fused_kinds = sorted({name.split(".")[2] for name in packs})
        notes.append(f"the base fuses {' and '.join(fused_kinds)}: {len(packs)} LoRAs packed onto them, exactly "
                     "(A stacked, B block-diagonal)")
    if unmapped:
        shown = ", ".join(unmapped[:12]) + (f", ... ({len(unmapped) - 12} more)" if len(unmapped) > 12 else "")
        problems.append(
            f"{len(unmapped)} of {len(ckpt.modules)} modules did not map to {shape.spec.name} tensors "
            f"({len(ckpt.modules) - len(unmapped)} did): {shown}. A {shape.spec.name} base's Hugging Face modules "
            f"look like {shape.spec.tree_example}; an adapter trained on another model family cannot be converted for it"
        )
    note = _base_model_note(ckpt, shape.spec)
    if note:
        notes.append(note)
    return out


def _split_pairs(ckpt: Checkpoint, mod: LoraModule, parts: tuple[str, ...], shape: BaseShape,
                 problems: list[str]) -> dict[str, LoraPair]:
    """The LoRA of a module the base converter split by rows into ``parts``: A shared, B's rows
    split at the parts' row counts (exact)."""
    if not parts or shape.tensors is None:
        problems.append(f"{mod.module}: the base converter splits this module into several tensors; "
                        + ("pass --base (their sizes come from it)" if shape.tensors is None else
                           "the base holds none of the layouts it splits into"))
        return {}
    pair = LoraPair.from_peft(mod.a, mod.b, LINEAR, scale=b_fold_factor(mod.scale, ckpt.alpha, mod.rank),
                              magnitude=mod.magnitude).folded()  # DoRA's magnitude splits with the rows
    rows = [int(shape.tensors[g][0]) for g in parts]
    if {int(shape.tensors[g][1]) for g in parts} != {pair.a.shape[1]} or sum(rows) != pair.b.shape[0]:
        problems.append(f"{mod.module}: LoRA implies a {pair.weight_shape} weight but the base splits it into "
                        + ", ".join(f"{g} {tuple(shape.tensors[g])}" for g in parts))
        return {}
    out, start = {}, 0
    for gname, n in zip(parts, rows):
        out[gname] = pair.take_rows(np.arange(start, start + n))
        start += n
    return out


def _after_output_scale(spec: Family, gname: str, pair: LoraPair, shape: BaseShape, problems: list[str]) -> LoraPair:
    """An expert pair whose LoRA llama.cpp adds after a per-expert scale of the base product
    (:meth:`Family.lora_output_scale`) that transformers applies to the sum: B multiplied by it."""
    scale_name = spec.lora_output_scale(gname)
    if scale_name is None or shape.tensors is None or scale_name not in shape.tensors or shape.read is None:
        return pair
    scale = shape.read(scale_name).reshape(-1)
    if scale.shape[0] != pair.b.shape[0] or not np.isfinite(scale).all():
        problems.append(f"{gname}: the base's {scale_name} {tuple(scale.shape)} is not one finite scale per expert")
        return pair
    return replace(pair, b=(pair.b.astype(np.float64) * scale[:, None, None]).astype(np.float32))


def _base_model_note(ckpt: Checkpoint, spec: Family) -> str | None:
    """A note when the adapter's recorded base model is of another family than the GGUF base."""
    name = str(ckpt.provenance.get("base_model") or "").lower()
    family = family_named_in(name)
    if family is not None and family != spec.name and family_for(family) is not spec:
        return (f"the adapter records base model {ckpt.provenance['base_model']!r}, which looks like {family}, "
                f"not {spec.name}: check that this is the base it was trained on")
    return None


def _target(
    ckpt: Checkpoint, mod: LoraModule, shape: BaseShape, problems: list[str], unmapped: list[str],
    merging: bool = False,
) -> tuple[MODEL_TENSOR, str] | None:
    spec = shape.spec
    last = mod.module.rsplit(".", 1)[-1]
    found = spec.tensor_for(mod.module, max(shape.n_layers, 1))
    is_output = last in OUTPUT_MODULE_NAMES or (found is not None and found[0] == MODEL_TENSOR.OUTPUT)
    if is_output and shape.tensors is not None and (found is None or found[1] not in shape.tensors):
        problems.append(
            f"{mod.module}: lm_head LoRA on a base whose output shares the token embedding "
            "(tied weights): llama.cpp would apply it to both, so it cannot be converted"
        )
        return None
    why = spec.no_lora_reason(mod.module)
    if why is not None:
        problems.append(f"{mod.module}: {why}")
        return None
    if found is None:
        unmapped.append(mod.module)
        return None
    if ckpt.format == "mlx":
        n = ckpt.config.get("num_layers")
        idx = spec.layer_of(mod.module)
        if isinstance(n, int) and n >= 0 and idx is not None and shape.tensors is not None and idx < shape.n_layers - n:
            problems.append(
                f"{mod.module}: layer {idx} is outside the last num_layers={n} of {shape.n_layers} layers"
            )
            return None
    if mod.kind == EMBEDDING and shape.tensors is not None and OUTPUT_TENSOR not in shape.tensors:
        if ckpt.ties_output and merging:
            return found  # into token_embd, which is the output too: both uses, as trained
        if ckpt.ties_output:
            how = "MLX-LM's as_linear" if ckpt.format == "mlx" else "PEFT's ensure_weight_tying"
            problems.append(
                f"{mod.module}: embedding LoRA trained tied to the output ({how}) on a base whose output is the token "
                "embedding: it cannot be a GGUF adapter, because llama.cpp stores an embedding LoRA in a layout its "
                "output matmul cannot use (loading it would abort the process); merge it into the base instead "
                "(edge-lora merge: exact, token_embd is the output too)")
        else:
            problems.append(
                f"{mod.module}: embedding LoRA on a base whose output shares the token embedding (tied weights): "
                "PEFT trained it on the embedding alone (ensure_weight_tying is off), and llama.cpp would apply it "
                "to the output layer too, in a layout that aborts the process; it cannot be converted or merged "
                "into this base as trained")
        return None
    if mod.kind == EMBEDDING and found[0] != MODEL_TENSOR.TOKEN_EMBD:
        problems.append(f"{mod.module}: embedding LoRA on a module that is not the token embedding")
        return None
    return found


def _pair(
    ckpt: Checkpoint, mod: LoraModule, ttype: MODEL_TENSOR, gname: str, shape: BaseShape, problems: list[str],
    check_shape: bool = True,
) -> LoraPair | None:
    pair = LoraPair.from_peft(mod.a, mod.b, mod.kind, scale=b_fold_factor(mod.scale, ckpt.alpha, mod.rank),
                              magnitude=mod.magnitude)
    if shape.tensors is not None and check_shape:
        have = shape.tensors.get(gname)
        if have is None:
            problems.append(f"{mod.module}: the base has no tensor {gname}")
            return None
        if tuple(have) != pair.weight_shape:
            problems.append(
                f"{mod.module}: LoRA implies a {pair.weight_shape} weight but the base's {gname} is {tuple(have)}"
            )
            return None
    pair = pair.folded()
    n_head, n_head_kv = shape.heads_at(shape.spec.layer_of(mod.module))
    transform = shape.spec.row_transform(ttype, n_head, n_head_kv)
    if transform is not None:
        pair = pair.with_output_rows(transform)
    elif shape.spec.needs_head_counts(ttype):
        problems.append(f"{mod.module}: {shape.spec.name} Q/K rows must be permuted with the head counts: pass --base")
        return None
    if shape.spec.needs_base_values(ttype):
        if shape.value is None:
            problems.append(f"{mod.module}: {shape.spec.name} reorders this weight by the base's head counts: pass --base")
            return None
        index = shape.spec.base_transform(ttype, shape.value, pair.weight_shape)
        if index is not None:
            pair = pair.with_output_rows(lambda b: b[index.rows]) if index.rows is not None else pair
            pair = pair.with_input_columns(index.cols) if index.cols is not None else pair
    return pair


def _provenance(ckpt: Checkpoint, shape: BaseShape) -> dict[str, object]:
    ranks = sorted({m.configured_rank for m in ckpt.modules})
    folded = any(abs(b_fold_factor(m.scale, ckpt.alpha, m.configured_rank) - 1.0) > 1e-12 for m in ckpt.modules)
    p = ckpt.provenance
    meta: dict[str, object] = {
        Keys.General.NAME: ckpt.path.name,
        EdgeLoraKeys.SOURCE_FORMAT: p.get("source_format", ckpt.format),
        EdgeLoraKeys.BASE_MODEL: p.get("base_model", ""),
        EdgeLoraKeys.TARGET_MODULES: p.get("target_modules", ""),
        EdgeLoraKeys.RANKS: ranks,
        EdgeLoraKeys.CONVERTER_VERSION: f"edge-lora {__version__}",
        EdgeLoraKeys.WEIGHTS_FILE: p.get("weights_file", ""),
        EdgeLoraKeys.SCALES_FOLDED: folded,
        EdgeLoraKeys.CHECKED_AGAINST_BASE: shape.tensors is not None,
    }
    if p.get("weights_dtypes"):
        meta[EdgeLoraKeys.WEIGHTS_DTYPES] = p["weights_dtypes"]
    if p.get("peft_version"):
        meta[EdgeLoraKeys.PEFT_VERSION] = p["peft_version"]
    if p.get("text_only"):
        meta[EdgeLoraKeys.TEXT_ONLY] = True
    if p.get("alora_invocation_tokens"):  # llama.cpp reads them as UINT32 (llama_adapter_lora_init_impl)
        meta[Keys.Adapter.ALORA_INVOCATION_TOKENS] = GGUFArray(tuple(p["alora_invocation_tokens"]), GGUFValueType.UINT32)
    return meta
