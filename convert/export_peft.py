"""A GGUF LoRA adapter back to a PEFT directory (``edge-lora export --peft``).

The inverse of :mod:`.converter`: GGUF tensor names become Hugging Face module paths
through the same name table, llama.cpp's Q/K row permutation is undone, and
llama.cpp's per-tensor scale ``alpha / rank`` becomes PEFT's ``lora_alpha / r`` with a
``rank_pattern`` for the modules of another rank. The factors keep their storage
type, so ``convert`` of the export gives the original file's tensor bytes again.
The directory (``adapter_config.json`` + ``adapter_model.safetensors``) is written
beside ``out_dir`` and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, Keys
from gguf.quants import quantize

from edge_lora.errors import ConversionError
from edge_lora.formats.gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, WEIGHT_SUFFIX, GGUFInfo, read_gguf, require_base
from edge_lora.formats.keys import EdgeLoraKeys
from edge_lora.families import Family, family_for, supported_names
from edge_lora.lora.adapter import read_gguf_lora, read_tensor_f32
from edge_lora.lora.pair import EMBEDDING, EXPERTS, LINEAR, LoraPair, pack
from edge_lora.lora.scales import llama_cpp_scale

from .export_experts import EXPERT_LAYOUTS, fused_modules, per_expert_modules
from edge_lora.outputs import atomic_dir, check_output


CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: PEFT's state-dict prefix: a PeftModel wraps the LoraModel wrapping the transformers model
PEFT_PREFIX = "base_model.model."

#: vLLM's accepted ``--max-lora-rank`` values and its default (vllm/config/lora.py, MaxLoRARanks)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16

#: PEFT's state-dict names of each layout's factors (``LoraLayer``, ``Embedding``)
_PEFT_FACTOR_NAMES = {LINEAR: ("lora_A.weight", "lora_B.weight"), EMBEDDING: ("lora_embedding_A", "lora_embedding_B")}

#: safetensors dtype of each GGUF storage type kept as it is; others (Q8_0) are written as F32
_KEPT_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


@dataclass(frozen=True)
class ExportTensor:
    """One safetensors entry: ``key`` (PEFT state-dict name), float32 ``data`` in numpy order,
    and the safetensors ``dtype`` it is stored as (F32, F16 or BF16)."""

    key: str
    data: np.ndarray
    dtype: str


@dataclass(frozen=True)
class ExportResult:
    """What ``export_peft`` wrote: the PEFT directory and how llama.cpp's scales were expressed."""

    out_dir: Path
    arch: str
    #: the GGUF file's ``adapter.lora.alpha`` (0: llama.cpp scales by 1)
    alpha: float
    #: adapter_config.json's ``r`` (the most common rank) and ``lora_alpha``
    r: int
    lora_alpha: float
    #: module path -> rank, for every adapted module
    ranks: dict[str, int]
    #: (safetensors key, shape, dtype) of every tensor written
    tensors: tuple[tuple[str, tuple[int, ...], str], ...]
    base_model: str | None
    notes: tuple[str, ...] = ()

    @property
    def modules(self) -> int:
        return len(self.ranks)


def export_peft(
    adapter: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    expert_layout: str = "fused",
) -> ExportResult:
    """Write the GGUF LoRA ``adapter`` as a PEFT directory ``out_dir``.

    ``base`` (the GGUF base) is checked against and, for architectures whose Q/K rows
    llama.cpp permuted (llama, mistral), gives the head counts needed to undo it.
    Every problem is raised at once (:class:`ConversionError`); a base given as the adapter or
    an adapter as the base is :class:`GGUFFileError`, an adapter that does not fit ``base``
    :class:`IncompatibleAdapterError`. Expert LoRA is written in ``expert_layout``: ``fused``
    (transformers 5's 3-D expert parameters, PEFT ``target_parameters``) or ``per-expert``
    (transformers 4's modules; :mod:`.export_experts`). Also raised: an adapter that does not fit ``base``
    :class:`IncompatibleAdapterError`; an existing ``out_dir`` is replaced only with
    ``overwrite`` (atomically), else :class:`OutputExistsError`.
    """
    if expert_layout not in EXPERT_LAYOUTS:
        raise ConversionError(f"expert layout {expert_layout!r}: choose one of {', '.join(EXPERT_LAYOUTS)}")
    out = Path(out_dir)
    base_info = read_gguf(base) if base is not None else None
    if base_info is not None:
        require_base(base_info, "--base")
    source = read_gguf_lora(adapter, base=base_info)  # refuses a base model given as the adapter
    info = read_gguf(source.path)
    spec = family_for(info.architecture)
    if spec is None:
        raise ConversionError(f"{info.path}: architecture {info.architecture!r} cannot be exported; "
                              f"supported: {', '.join(supported_names())}")
    alpha = float(info.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0))
    problems: list[str] = []
    notes: list[str] = []
    plan = _plan(info, spec, source.weights, base_info, problems, notes, alpha, expert_layout)
    if problems:
        raise ConversionError(f"{info.path}: cannot export to PEFT", problems)
    check_output(out, inputs=[source.path] + ([base_info.path] if base_info else []), overwrite=overwrite,
                 folder=True, replaceable=_only_an_adapter)
    base_model = str(info.metadata.get(EdgeLoraKeys.BASE_MODEL) or "") or None
    config, r, lora_alpha = peft_config(plan.ranks, alpha, base_model, plan.parameters, source.invocation_tokens)
    notes += _scale_notes(plan.ranks, alpha, r) + vllm_notes(plan.ranks, r, plan.vocab_modules)
    atomic_dir(out, {CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
                     WEIGHTS_FILE: safetensors_bytes(plan.tensors, {"format": "pt"})}, overwrite=overwrite)
    return ExportResult(
        out_dir=out, arch=spec.name, alpha=alpha, r=r, lora_alpha=lora_alpha, ranks=plan.ranks,
        tensors=tuple((t.key, tuple(t.data.shape), t.dtype) for t in plan.tensors),
        base_model=base_model, notes=tuple(notes),
    )


# --- names ---------------------------------------------------------------------------


def hf_module_names(spec: Family, n_layers: int, base: GGUFInfo | None = None) -> Mapping[str, tuple[MODEL_TENSOR, str]]:
    """GGUF tensor name -> its type and Hugging Face module path (:meth:`Family.hf_module_names`),
    with the family's own names where ``base`` carries its :attr:`~Family.extras_marker`."""
    return spec.hf_module_names_for(n_layers, uses_extras(spec, base))


def uses_extras(spec: Family, base: GGUFInfo | None) -> bool:
    """Whether the family's own names are the model's (:attr:`Family.extras_marker`, read from ``base``)."""
    return spec.extras_marker is None or (base is not None and base.arch_value(spec.extras_marker) is not None)


def _n_layers(info: GGUFInfo, base: GGUFInfo | None) -> int:
    if base is not None:
        return int(base.arch_value(Keys.LLM.BLOCK_COUNT, 0))
    layers = [int(m.group(1)) for n in info.tensors if (m := re.match(r"blk\.(\d+)\.", n))]
    return max(layers, default=-1) + 1


def _layer_value(value: object, layer: int) -> int | None:
    """A per-layer hyperparameter: one number, or an array with one per layer."""
    if isinstance(value, list):
        value = value[layer] if layer < len(value) else None
    return int(value) if isinstance(value, (int, float)) else None


# --- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    tensors: list[ExportTensor]
    ranks: dict[str, int]  # module path -> rank
    vocab_modules: list[str]  # the token embedding's and the output's modules, when adapted
    parameters: list[str]  # the keys of ranks that are target_parameters (fused expert parameters)


def _plan(
    info: GGUFInfo, spec: Family, weights: dict[str, LoraPair], base: GGUFInfo | None,
    problems: list[str], notes: list[str], alpha: float, expert_layout: str,
) -> _Plan:
    n_layers = _n_layers(info, base)
    # dense Granite 4 on a granite base: its shared MLP's names, if the base says so
    extras = uses_extras(spec, base)
    if spec.extras_marker is not None and base is None:
        notes.append(f"{spec.name}: without --base the Hugging Face names are those of the models without a shared "
                     "MLP (Granite 3's mlp.*_proj); pass --base for a Granite 4 base")
    names = hf_module_names(spec, n_layers, base)
    tensors: list[ExportTensor] = []
    ranks: dict[str, int] = {}
    vocab: list[str] = []
    unmapped: list[str] = []
    no_heads: list[str] = []
    quantized: Counter[str] = Counter()
    experts: dict[str, tuple[LoraPair, list[str]]] = {}  # GGUF name -> pair, storage types
    parameters: list[str] = []  # the target_parameters entries among ranks
    joined, weights = _join_split_modules(spec, weights, n_layers, alpha) if extras else ({}, weights)
    for module, (w, part) in joined.items():  # modules the base converter split by rows, joined again
        ranks[module] = w.rank
        dtypes = [_storage(info, part + suffix, quantized) for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX)]
        tensors += [ExportTensor(f"{PEFT_PREFIX}{module}.{k}", f, d) for k, f, d in
                    zip(_PEFT_FACTOR_NAMES[LINEAR], w.to_peft(), dtypes)]
    for gname, w in sorted(weights.items()):
        if gname not in names:
            unmapped.append(gname)
            continue
        ttype, module = names[gname]
        if spec.needs_base_values(ttype):
            if base is None:
                no_heads.append(gname)
                continue
            index = spec.base_transform(ttype, base.arch_value, w.weight_shape)
            if index is not None:
                back = index.inverse()
                w = w.with_output_rows(lambda x, rows=back.rows: x[rows]) if back.rows is not None else w
                w = w.with_input_columns(back.cols) if back.cols is not None else w
        if spec.needs_head_counts(ttype):
            rows = _unpermuted_rows(spec, ttype, gname, base, w.b.shape[0])
            if rows is None:
                no_heads.append(gname)
                continue
            w = w.with_output_rows(lambda x, rows=rows: x[rows])
        dtypes = [_storage(info, gname + suffix, quantized) for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX)]
        if ttype in (MODEL_TENSOR.TOKEN_EMBD, MODEL_TENSOR.OUTPUT):
            vocab.append(module)
        if w.layout == EXPERTS:
            scale_name = spec.lora_output_scale(gname)
            if scale_name is not None:  # converted as B * the base's per-expert scale: undone
                if base is None or scale_name not in base.tensors:
                    no_heads.append(gname)
                    continue
                scale = read_tensor_f32(np.memmap(base.path, dtype=np.uint8, mode="r"), base.tensors[scale_name])
                w = replace(w, b=(w.b.astype(np.float64) / scale.reshape(-1)[:, None, None]).astype(np.float32))
            experts[gname] = (w, dtypes)
            continue
        if expert_layout == "fused" and ttype == MODEL_TENSOR.FFN_GATE_INP:
            parameters.append(f"{module}.weight")  # transformers 5's routers hold a raw weight, no nn.Linear
            ranks[f"{module}.weight"] = w.rank
            tensors += [ExportTensor(f"{PEFT_PREFIX}{module}.{k}", f, d) for k, f, d in
                        zip(_PEFT_FACTOR_NAMES[LINEAR], w.to_peft(), dtypes)]
            continue
        a, b = w.to_peft()
        names_ab = _PEFT_FACTOR_NAMES[w.layout]
        ranks[module] = w.rank
        tensors.append(ExportTensor(f"{PEFT_PREFIX}{module}.{names_ab[0]}", a, dtypes[0]))
        tensors.append(ExportTensor(f"{PEFT_PREFIX}{module}.{names_ab[1]}", b, dtypes[1]))
    if experts and expert_layout == "per-expert" and spec.expert_modules is None:
        problems.append(f"{spec.name} has experts only as fused parameters (no per-expert modules): export with "
                        "--expert-layout fused")
        return _Plan(tensors, ranks, vocab, parameters)
    fused, left = (fused_modules(spec, {g: w for g, (w, _) in experts.items()}, n_layers, alpha)
                   if expert_layout == "fused" else ([], sorted(experts)))
    for em in [*fused, *(em for g in left for em in per_expert_modules(spec, g, names[g][1], experts[g][0]))]:
        dtypes = experts[em.source][1]
        ranks[em.rank_key] = em.rank
        if em.parameter:
            parameters.append(em.rank_key)
        tensors.append(ExportTensor(f"{PEFT_PREFIX}{em.module}.lora_A.weight", em.a, dtypes[0]))
        tensors.append(ExportTensor(f"{PEFT_PREFIX}{em.module}.lora_B.weight", em.b, dtypes[1]))
    if unmapped:
        problems.append(f"{len(unmapped)} tensors have no Hugging Face {spec.name} module: {', '.join(unmapped[:12])}"
                        + (f", ... ({len(unmapped) - 12} more)" if len(unmapped) > 12 else ""))
    if no_heads:
        problems.append(f"{', '.join(no_heads)}: these were converted with values of the {spec.name} base (head "
                        "counts to permute rows or columns, per-expert scales); undoing it needs them: pass --base BASE.gguf")
    if quantized:
        notes.append(f"{sum(quantized.values())} factors stored as {', '.join(sorted(quantized))} were written as "
                     "F32 (safetensors has no such type)")
    return _Plan(tensors, ranks, vocab, parameters)


def _join_split_modules(spec: Family, weights: dict[str, LoraPair], n_layers: int,
                        alpha: float) -> tuple[dict[str, tuple[LoraPair, str]], dict[str, LoraPair]]:
    """The LoRA of each module the base converter split by rows (:attr:`Family.split_modules`),
    joined from its parts' (:func:`~edge_lora.lora.pair.pack`: their A kept when shared; a part
    the file lacks gets zero rows of its sibling's size), B refolded for the exported scale
    ``alpha / r`` at the joined rank, with the first part's name (for storage types); and the
    other weights."""
    joined: dict[str, tuple[LoraPair, str]] = {}
    rest = dict(weights)
    for bid in range(n_layers):
        for path, layouts in spec.split_modules:
            for parts in layouts:
                names = [TENSOR_NAMES[t].format(bid=bid) + WEIGHT_SUFFIX for t in parts]
                have = [n for n in names if n in rest]
                if not have:
                    continue
                first = rest[have[0]]
                pairs = [rest.pop(n) if n in rest else
                         LoraPair(np.zeros((1, first.a.shape[1]), np.float32), np.zeros((first.b.shape[0], 1), np.float32))
                         for n in names]
                packed = pack(pairs)  # scale 1: each part's own scale folded in
                packed = replace(packed, scale=1.0 / llama_cpp_scale(alpha, packed.rank)).folded()
                joined[f"model.layers.{bid}.{path}"] = (packed, have[0])
                break
    return joined, rest


def _unpermuted_rows(
    spec: Family, ttype: MODEL_TENSOR, gname: str, base: GGUFInfo | None, n_rows: int
) -> np.ndarray | None:
    """Row indices that undo the converter's row transform of this tensor, or None without head
    counts (:meth:`Family.inverse_row_transform`)."""
    if base is None:
        return None
    m = re.match(r"blk\.(\d+)\.", gname)
    layer = int(m.group(1)) if m else 0
    n_head = _layer_value(base.arch_value(Keys.Attention.HEAD_COUNT), layer)
    n_head_kv = _layer_value(base.arch_value(Keys.Attention.HEAD_COUNT_KV), layer)
    return spec.inverse_row_transform(ttype, n_head, n_head_kv, n_rows)


def _storage(info: GGUFInfo, name: str, quantized: Counter[str]) -> str:
    type_name = info.tensors[name].type_name
    if type_name not in _KEPT_TYPES:
        quantized[type_name] += 1
    return _KEPT_TYPES.get(type_name, "F32")


# --- scales and the config -----------------------------------------------------------


def peft_config(ranks: Mapping[str, int], alpha: float, base_model: str | None,
                parameters: Sequence[str] = (), invocation_tokens: Sequence[int] = ()) -> tuple[dict[str, object], int, float]:
    """adapter_config.json for these module ranks and the GGUF file's alpha; returns (config, r, lora_alpha).

    llama.cpp scales a tensor of rank ``r_t`` by ``alpha / r_t`` (1 when alpha is 0); PEFT a
    module by ``alpha_m / r_m``. ``r`` is the most common rank, the others go to ``rank_pattern``;
    ``lora_alpha`` is the file's alpha. Alpha 0 becomes ``lora_alpha = r`` with ``alpha_m = r_m``
    in ``alpha_pattern`` for the other ranks: scale 1 everywhere, and vLLM (which reads
    ``lora_alpha / r`` alone) gets it right whenever the ranks agree. An aLoRA's
    ``invocation_tokens`` become PEFT's ``alora_invocation_tokens``.
    """
    r = Counter(ranks.values()).most_common(1)[0][0]
    others = {m: k for m, k in sorted(ranks.items()) if k != r}
    lora_alpha = alpha if alpha else float(r)
    config: dict[str, object] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": _plain_number(lora_alpha),
        "rank_pattern": others,
        "alpha_pattern": {} if alpha else dict(others),
        # full module paths: PEFT matches list entries by equality or a ".name" suffix
        "target_modules": sorted(set(ranks) - set(parameters)),
        # fused expert parameters (lora.ParamWrapper), by full path likewise
        "target_parameters": sorted(parameters) or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
    }
    if invocation_tokens:
        config["alora_invocation_tokens"] = [int(t) for t in invocation_tokens]
    return config, r, lora_alpha


def _plain_number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _scale_notes(ranks: Mapping[str, int], alpha: float, r: int) -> list[str]:
    if alpha:
        return []
    return [f"the file's alpha is 0 (llama.cpp scales by 1): written as lora_alpha = r = {r}"
            + (" with alpha_pattern = rank_pattern for the other ranks" if len(set(ranks.values())) > 1 else "")
            + f"; converting the export back gives alpha {r} with the same scales"]


def vllm_notes(ranks: Mapping[str, int], r: int, vocab_modules: Sequence[str] = ()) -> list[str]:
    """What vLLM needs told, or cannot do, for this adapter (rules of vllm/lora/peft_helper.py,
    lora_model.py and config/lora.py)."""
    notes: list[str] = []
    top = max(ranks.values())
    if top > VLLM_DEFAULT_MAX_LORA_RANK:
        fit = [k for k in VLLM_MAX_LORA_RANKS if k >= top]
        notes.append(f"vLLM: the largest rank is {top}, above vLLM's default --max-lora-rank "
                     f"{VLLM_DEFAULT_MAX_LORA_RANK}: " + (f"pass --max-lora-rank {fit[0]}" if fit else
                                                          f"vLLM accepts at most {VLLM_MAX_LORA_RANKS[-1]}"))
    other = sorted(m for m, k in ranks.items() if k != r)
    if other:
        notes.append(f"vLLM: {len(other)} modules have another rank than r={r} (rank_pattern); vLLM scales every "
                     f"module by lora_alpha / r and ignores rank_pattern and alpha_pattern, so those would be scaled "
                     f"wrongly there (PEFT reads them right): {', '.join(other[:4])}" + (", ..." if len(other) > 4 else ""))
    if vocab_modules:
        notes.append(f"vLLM: LoRA on {' and '.join(vocab_modules)} loads only for model classes that list the module in "
                     "their embedding_modules (LlamaForCausalLM does, Qwen2ForCausalLM does not); others refuse it")
    return notes


# --- writing -------------------------------------------------------------------------


def safetensors_bytes(tensors: list[ExportTensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file: u64 little-endian header length, the JSON header (padded with spaces
    to 8 bytes), then each tensor's little-endian C-order bytes, back to back in header order.
    Written here rather than with safetensors.numpy, which has no bfloat16."""
    header: dict[str, object] = {"__metadata__": metadata}
    blobs: list[bytes] = []
    offset = 0
    for t in sorted(tensors, key=lambda t: t.key):
        blob = _encode(t.data, t.dtype)
        header[t.key] = {"dtype": t.dtype, "shape": list(t.data.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def _encode(data: np.ndarray, dtype: str) -> bytes:
    f32 = np.ascontiguousarray(data, dtype=np.float32)
    if dtype == "F32":
        return f32.astype("<f4").tobytes()
    if dtype == "F16":
        return f32.astype("<f2").tobytes()  # exact: the values were decoded from f16
    return quantize(f32, GGMLQuantizationType.BF16).tobytes()  # gguf's bf16 encoder; exact for bf16 values


def _only_an_adapter(out: Path) -> str | None:
    """--force replaces a PEFT adapter folder, never a folder of other things."""
    others = sorted(p.name for p in out.iterdir() if p.name not in _PEFT_FILES)
    if not others:
        return None
    shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
    return f"holds files that are not a PEFT adapter's ({shown}); --force replaces only an adapter folder: choose a new folder"


#: what an adapter folder --force may replace holds nothing but these
_PEFT_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md"}
