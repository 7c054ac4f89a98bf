"""What a model family is, as one object: :class:`Family`.

A family is one GGUF architecture (``llama``, ``qwen3``...) and the Hugging Face models that
convert to it. It knows:

- its Hugging Face names: the ``model_type`` values, the module tree of its checkpoints, the
  modules LoRA targets (for the way back to PEFT), the words of its model names;
- the name mapping both ways, built on gguf-py's ``TensorNameMap`` (the table llama.cpp's own
  converters use), restricted to the family's own module tree;
- the transforms llama.cpp's base converter applies to its weights, which a LoRA must follow
  (:meth:`Family.row_transform`) and an export must undo (:meth:`Family.inverse_row_transform`);
- what its base converter writes beyond the common hyperparameters (:meth:`Family.write_hparams`)
  and its base-only weight quirks, so test bases are built through the same object.

A new family is one module in this package declaring one :class:`Family` (or a subclass, for
transforms), registered in :mod:`.registry`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, MODEL_TENSORS, TENSOR_NAMES, TensorNameMap

from ..errors import ConversionError
from ..formats.gguf_file import WEIGHT_SUFFIX

#: the Hugging Face module tree of the decoder families (LlamaForCausalLM and its descendants):
#: blocks under ``model.layers.N`` (``self_attn``, ``mlp`` and norms), the token embedding
#: ``model.embed_tokens``, the final ``model.norm`` and the head ``lm_head``. gguf-py's
#: TensorNameMap is the union of every family's names (``transformer.h.N.attn.q_proj`` of GPT-J
#: maps to attn_q as well), so a path must first belong to the base's own family.
HF_DECODER_TREE = re.compile(r"^(?:model\.layers\.\d+\.[A-Za-z0-9_.]+|model\.embed_tokens|model\.norm|lm_head)$")

#: the modules LoRA targets in those decoder families, for the reverse mapping: gguf's table also
#: maps ``self_attn.out_proj`` and ``mlp.c_proj`` to attn_output and ffn_down, so the way back
#: keeps the names these families use (``mlp.gate``, ``block_sparse_moe.gate``: MoE routers, ``ffn_gate_inp``)
HF_DECODER_LORA_MODULES = re.compile(
    r"^(?:model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o|qkv)_proj|mlp\.(?:gate|up|down|gate_up)_proj|mlp\.gate|block_sparse_moe\.gate)"
    r"|model\.embed_tokens|lm_head)$"
)

RowTransform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class FusedExperts:
    """A transformers-5 expert parameter: every expert's weight in one 3-D ``nn.Parameter`` of the
    experts module (``mlp.experts.gate_up_proj``), which the base converter splits into the
    stacked tensors of its parts (``ffn_gate_exps``, ``ffn_up_exps``; ``conversion/qwen.py``).

    Its rows, in the model's (out, in) orientation, hold the parts one after the other
    (``gate = W[:, :ff]``, transformers' ``chunk(2)``) or, ``interleaved``, row by row (gpt-oss:
    ``gate = W[:, ::2]``). ``transposed``: stored (E, in, out), multiplied as ``x @ W[e]``
    (gpt-oss), not (E, out, in) as ``F.linear(x, W[e])``.
    """

    param: str
    parts: tuple[str, ...]
    interleaved: bool = False
    transposed: bool = False
    #: a bias (E, out) of the parts (``gate_up_proj_bias``): base-only, no LoRA adapts it
    bias: bool = False

    def part_rows(self, n_rows: int) -> list[np.ndarray]:
        """The (out, in)-orientation row indices of each part, in :attr:`parts` order."""
        n = len(self.parts)
        if n_rows % n:
            raise ValueError(f"{self.param}: {n_rows} rows do not split into {n} parts")
        if self.interleaved:
            return [np.arange(i, n_rows, n) for i in range(n)]
        size = n_rows // n
        return [np.arange(i * size, (i + 1) * size) for i in range(n)]

    def split_weight(self, data: np.ndarray) -> list[np.ndarray]:
        """A base parameter (E, d1, d2) as each part's stacked weight (E, out, in); a bias (E, out)
        as each part's (E, out_part)."""
        if self.bias:
            return [data[:, rows] for rows in self.part_rows(data.shape[1])]
        w = np.swapaxes(data, 1, 2) if self.transposed else data
        return [w[:, rows, :] for rows in self.part_rows(w.shape[1])]


_EXPERT_TENSORS = (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP, MODEL_TENSOR.FFN_DOWN_EXP)

@dataclass(frozen=True)
class IndexTransform:
    """A weight's rows and columns permuted by the base converter (:meth:`Family.base_transform`):
    the converted weight is ``W[rows][:, cols]``; None leaves that axis alone."""

    rows: np.ndarray | None = None
    cols: np.ndarray | None = None

    def inverse(self) -> IndexTransform:
        """The permutation that undoes this one (for the way back to PEFT)."""
        return IndexTransform(None if self.rows is None else np.argsort(self.rows),
                              None if self.cols is None else np.argsort(self.cols))


#: transformers 5's gated experts (Qwen-MoE, Mixtral, OLMoE...): ``gate_up_proj`` (E, 2 ff, hidden), gate
#: rows first, and ``down_proj`` (E, hidden, ff)
GATED_EXPERTS = (FusedExperts("gate_up_proj", ("gate_proj", "up_proj")), FusedExperts("down_proj", ("down_proj",)))


@dataclass(frozen=True)
class Family:
    """One GGUF architecture and the Hugging Face models that convert to it."""

    arch: MODEL_ARCH
    #: Hugging Face ``model_type`` values whose checkpoints convert to this GGUF arch
    hf_model_types: tuple[str, ...]
    #: lower-case words of its model names (``base_model_name_or_path``), for the wrong-base note
    name_words: tuple[str, ...] = ()
    #: the module paths of this family's Hugging Face models
    module_tree: re.Pattern[str] = HF_DECODER_TREE
    #: the modules LoRA targets, for the way back to PEFT
    lora_modules: re.Pattern[str] = HF_DECODER_LORA_MODULES
    #: how the module tree looks, for messages
    tree_example: str = "model.layers.N.self_attn.q_proj, model.layers.N.mlp.up_proj"
    #: the base converter stores RMSNorm weights as ``1 + w`` (Gemma computes ``x * (1 + w)``)
    norm_plus_one: bool = False
    #: hyperparameters the base converter writes beyond the common ones, as (GGUFWriter method,
    #: config attribute or dotted path, :func:`config_value`) pairs: ``writer.add_sliding_window(config.sliding_window)``
    extra_hparams: tuple[tuple[str, str], ...] = ()
    #: per-expert module paths (transformers 4 MoE layers: one ``nn.Linear`` per expert), with
    #: groups (stacked module, expert index, projection): the base converter stacks the experts of
    #: ``<stacked module>.<projection>`` into one 3-D tensor (``ffn_*_exps``), expert 0 first
    expert_modules: re.Pattern[str] | None = None
    #: the MoE router's module (``ffn_gate_inp``) in this family's checkpoints, for the way back
    router_module: str = "mlp.gate"
    #: transformers 5's fused expert parameters (3-D ``nn.Parameter`` on the experts module, which
    #: PEFT adapts with ``target_parameters``), in the module of :attr:`experts_path`, in the module's
    #: parameter order (PEFT nests the wrappers of several in that order)
    fused_experts: tuple[FusedExperts, ...] = ()
    #: the experts module of transformers 5's MoE layers, by block index ``bid``
    experts_path: str = "model.layers.{bid}.mlp.experts"
    #: fused tensors a base may hold in place of their parts (llama.cpp's ``--fuse-qkv``: q, k and v
    #: concatenated by rows, after the parts' own transforms; ``--fuse-gate-up-exps``: each expert's
    #: gate and up rows), as (fused, parts in row order)
    packed: tuple[tuple[MODEL_TENSOR, tuple[MODEL_TENSOR, ...]], ...] = (
        (MODEL_TENSOR.ATTN_QKV, (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V)),
        (MODEL_TENSOR.FFN_GATE_UP_EXP, (MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP)))
    #: GGUF archs of adapters that run unchanged on this family's bases (same tensors, same
    #: transforms): a ``llama`` adapter on a ``mistral3`` base of the same model
    adapter_archs: tuple[str, ...] = ()
    #: modules llama.cpp multiplies without LoRA (a raw ``ggml_mul_mat``), as (module path regex,
    #: why): an adapter on them would load and change nothing, so it is refused by name
    no_lora: tuple[tuple[str, str], ...] = ()
    #: names of a block's modules gguf-py's table lacks (its converter maps them itself), as (path
    #: under ``model.layers.N.``, tensor type): Granite 4's ``block_sparse_moe.router``
    extra_names: tuple[tuple[str, MODEL_TENSOR], ...] = ()
    #: a base key whose presence says :attr:`extra_names` and :attr:`split_modules` are the model's on
    #: the way back to PEFT (dense Granite 4's ``{arch}.expert_shared_feed_forward_length`` on a
    #: ``granite`` base, where Granite 3 has ``mlp.*_proj``); None: always
    extras_marker: str | None = None
    #: a block's modules the base converter splits by rows into several tensors, as (path under
    #: ``model.layers.N.``, candidate part layouts in row order; the first the base holds is the
    #: one): Granite 4's ``shared_mlp.input_linear`` into ``ffn_gate_shexp`` + ``ffn_up_shexp``
    split_modules: tuple[tuple[str, tuple[tuple[MODEL_TENSOR, ...], ...]], ...] = ()

    @property
    def name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    # -- names ----------------------------------------------------------------------------
    def tensor_for(self, module: str, n_layers: int) -> tuple[MODEL_TENSOR, str] | None:
        """Map a checkpoint module path (``model.layers.3.self_attn.q_proj``) to its GGUF tensor:
        ``(tensor type, "blk.3.attn_q.weight")``, or None when the name is unknown for this
        architecture or not in its module tree."""
        if not self.module_tree.match(module):
            return None
        found = _name_map(self.arch, n_layers).get_type_and_name(module, try_suffixes=(WEIGHT_SUFFIX,))
        if found is None:
            bid = self.layer_of(module)
            extra = next((t for path, t in self.extra_names if bid is not None and module == f"model.layers.{bid}.{path}"), None)
            if extra is None:
                return None
            found = extra, TENSOR_NAMES[extra].format(bid=bid)
        ttype, name = found
        if ttype not in MODEL_TENSORS[self.arch]:
            return None
        return ttype, name + WEIGHT_SUFFIX

    def hf_module_names(self, n_layers: int) -> Mapping[str, tuple[MODEL_TENSOR, str]]:
        """GGUF tensor name (``blk.3.attn_q.weight``) -> its type and Hugging Face module path
        (``ATTN_Q``, ``model.layers.3.self_attn.q_proj``): :meth:`tensor_for` read backwards, over
        the LoRA modules of the family (an expert tensor gives its stacked module,
        ``model.layers.3.mlp.experts.up_proj``: :meth:`expert_module` names each expert's). Raises :class:`ConversionError` if the table gives one
        tensor several modules (a table change would otherwise pick one silently)."""
        return _hf_module_names(self, n_layers, self.extras_marker is None)

    def hf_module_names_for(self, n_layers: int, extras: bool) -> Mapping[str, tuple[MODEL_TENSOR, str]]:
        """:meth:`hf_module_names`, with the family's own names (:attr:`extra_names`, which replace
        gguf-py's for the same tensor) or without them."""
        return _hf_module_names(self, n_layers, extras)

    def keeps_module(self, hf_name: str, ttype: MODEL_TENSOR) -> bool:
        """Of several Hugging Face names for one tensor type, whether ``hf_name`` is this family's.
        ``gate_up_proj`` and ``up_proj`` both map to ffn_up: the fused one is the family's
        exactly when the architecture has no separate ffn_gate (Phi-3); of the routers' names, the
        family's :attr:`router_module`."""
        if ttype == MODEL_TENSOR.FFN_UP:
            fused_up = MODEL_TENSOR.FFN_GATE not in MODEL_TENSORS[self.arch]
            return hf_name.endswith(".gate_up_proj") == fused_up
        if ttype == MODEL_TENSOR.FFN_GATE_INP:
            return hf_name.endswith("." + self.router_module)
        if ttype in _EXPERT_TENSORS and self.fused_experts:
            return self.is_fused_part(hf_name)
        return True

    def is_fused_part(self, module: str) -> bool:
        """Whether ``module`` is a part of a fused expert parameter under the experts module
        (``model.layers.1.mlp.experts.up_proj`` of ``gate_up_proj``): the stacked modules export names."""
        parent, _, part = module.rpartition(".")
        return any(part in f.parts and self.fused_expert(parent, f.param) is not None
                   for f in self.fused_experts if not f.bias)

    def expert_of(self, module: str) -> tuple[str, int] | None:
        """``(stacked module, expert index)`` of a per-expert module path
        (``model.layers.1.mlp.experts.3.up_proj`` -> ``("model.layers.1.mlp.experts.up_proj", 3)``),
        or None for any other module."""
        m = self.expert_modules.match(module) if self.expert_modules is not None else None
        return (f"{m.group(1)}.{m.group(3)}", int(m.group(2))) if m else None

    def expert_module(self, stacked: str, expert: int) -> str | None:
        """The per-expert module path of expert ``expert`` of a stacked module (the inverse of
        :meth:`expert_of`), or None when ``stacked`` is not one of this family's expert modules."""
        parent, _, proj = stacked.rpartition(".")
        module = f"{parent}.{expert}.{proj}"
        return module if self.expert_of(module) == (stacked, expert) else None

    def fused_expert(self, module: str, param: str) -> FusedExperts | None:
        """The fused expert parameter ``param`` of the experts module ``module``
        (``model.layers.1.mlp.experts``, ``gate_up_proj``), or None when the family has no such parameter."""
        bid = self.layer_of(module + ".")
        if bid is None or module != self.experts_path.format(bid=bid):
            return None
        return next((f for f in self.fused_experts if f.param == param), None)

    def split_targets(self, module: str, base_tensors: Mapping[str, Any]) -> tuple[str, ...] | None:
        """The GGUF tensors, in row order, a module the base converter splits by rows went to
        (:attr:`split_modules`; the layout ``base_tensors`` holds), or None for any other module.
        An empty tuple: a split module whose parts the base holds in no known layout."""
        bid = self.layer_of(module)
        for path, layouts in self.split_modules:
            if bid is not None and module == f"model.layers.{bid}.{path}":
                for parts in layouts:
                    names = tuple(TENSOR_NAMES[t].format(bid=bid) + WEIGHT_SUFFIX for t in parts)
                    if all(n in base_tensors for n in names):
                        return names
                return ()
        return None

    def no_lora_reason(self, module: str) -> str | None:
        """Why LoRA on ``module`` cannot work on llama.cpp (:attr:`no_lora`), or None."""
        return next((why for pattern, why in self.no_lora if re.search(pattern, module)), None)

    def lora_output_scale(self, gguf_name: str) -> str | None:
        """The base tensor whose per-expert values llama.cpp multiplies this weight's product by
        *before* it adds the LoRA (Gemma 4's ``ffn_down_exps.scale``, which transformers applies to
        the whole expert output), or None. Its LoRA's B is multiplied by it per expert to match."""
        return None

    def layer_of(self, module: str) -> int | None:
        """The block index of a module path of this family, or None (embedding, head)."""
        m = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", module)
        return int(m.group(1)) if m else None

    def packed_into(self, gguf_name: str, base_tensors: Mapping[str, Any]) -> tuple[str, tuple[str, ...], int] | None:
        """Where a part's tensor lives in a fused base: ``(fused name, the parts' names in row order,
        this part's index)`` when ``base_tensors`` has no ``gguf_name`` but holds the fused tensor of
        its block (``blk.3.attn_q.weight`` -> ``blk.3.attn_qkv.weight``; ``blk.3.ffn_gate_exps.weight``
        -> ``blk.3.ffn_gate_up_exps.weight``); else None."""
        if gguf_name in base_tensors:
            return None
        block = next((int(p) for p in gguf_name.split(".") if p.isdecimal()), None)
        if block is None:
            return None
        for fused, parts in self.packed:
            names = tuple(TENSOR_NAMES[t].format(bid=block) + WEIGHT_SUFFIX for t in parts)
            fused_name = TENSOR_NAMES[fused].format(bid=block) + WEIGHT_SUFFIX
            if gguf_name in names and fused_name in base_tensors:
                return fused_name, names, names.index(gguf_name)
        return None

    # -- weight transforms ------------------------------------------------------------------
    def row_transform(self, ttype: MODEL_TENSOR, n_head: int | None, n_head_kv: int | None) -> RowTransform | None:
        """The transform llama.cpp's base converter applied to this weight's output rows, if any.
        A LoRA delta ``B @ A`` is transformed like the weight by transforming B's rows."""
        return None

    def needs_head_counts(self, ttype: MODEL_TENSOR) -> bool:
        """Whether :meth:`row_transform` of this tensor needs the base's head counts."""
        return False

    def inverse_row_transform(self, ttype: MODEL_TENSOR, n_head: int | None, n_head_kv: int | None,
                              n_rows: int) -> np.ndarray | None:
        """Row indices that undo :meth:`row_transform` on ``n_rows`` rows (the forward transform of
        ``arange`` inverted: one copy of the maths), or None when there is no transform."""
        forward = self.row_transform(ttype, n_head, n_head_kv)
        return None if forward is None else np.argsort(forward(np.arange(n_rows)))

    def base_transform(self, ttype: MODEL_TENSOR, value: Callable[[str], Any],
                       weight_shape: tuple[int, ...]) -> IndexTransform | None:
        """The permutation llama.cpp's base converter applied to this (out, in) weight that depends on
        the base's hyperparameters (``value(Keys.SSM.GROUP_COUNT)`` reads ``{arch}.ssm.group_count``
        of the base), as index arrays: the converted weight is ``W[rows][:, cols]``, so its LoRA is
        ``B[rows]``, ``A[:, cols]``. None when there is none."""
        return None

    def needs_base_values(self, ttype: MODEL_TENSOR) -> bool:
        """Whether :meth:`base_transform` of this tensor may permute it (a base is then required)."""
        return False

    # -- the base converter ---------------------------------------------------------------
    def hparam_overrides(self, config: Any) -> dict[str, Any]:
        """Common hyperparameters this family's converter writes otherwise (GGUFWriter method ->
        value; per-layer arrays included), applied in place of the common value."""
        return {}

    def base_tensor(self, hf_name: str, data: np.ndarray) -> np.ndarray:
        """A base weight as the base converter stores it, for base-only transforms (no LoRA targets
        it): as it is unless the family says otherwise."""
        return data

    def write_hparams(self, writer: Any, config: Any) -> None:
        """The hyperparameters llama.cpp's converter writes for this family beyond the common ones
        (``set_gguf_parameters``), from a Hugging Face config (attribute access)."""
        for method, attr in self.extra_hparams:
            value = config_value(config, attr)
            if value is not None:
                getattr(writer, method)(value)


def config_value(config: Any, path: str) -> Any:
    """A Hugging Face config value by attribute, or by a dotted path into its dicts
    (``rope_parameters.sliding_attention.rope_theta``); None when absent."""
    value: Any = config
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if value is None:
            return None
    return value


@functools.lru_cache(maxsize=64)
def _name_map(arch: MODEL_ARCH, n_layers: int) -> TensorNameMap:
    return TensorNameMap(arch, n_layers)


@functools.lru_cache(maxsize=16)
def _hf_module_names(family: Family, n_layers: int, extras: bool) -> Mapping[str, tuple[MODEL_TENSOR, str]]:
    found: dict[str, list[tuple[MODEL_TENSOR, str]]] = {}
    for hf_name in _name_map(family.arch, n_layers).mapping:
        if (not family.lora_modules.match(hf_name) and family.expert_module(hf_name, 0) is None
                and not family.is_fused_part(hf_name)):
            continue
        forward = family.tensor_for(hf_name, n_layers)
        if forward is None:
            continue
        ttype, gguf_name = forward
        if family.keeps_module(hf_name, ttype):
            found.setdefault(gguf_name, []).append((ttype, hf_name))
    for bid in range(n_layers if extras else 0):  # the family's own names, in place of gguf-py's
        for path, ttype in family.extra_names:
            hf_name = f"model.layers.{bid}.{path}"
            if ttype in MODEL_TENSORS[family.arch] and (family.lora_modules.match(hf_name)
                                                        or family.is_fused_part(hf_name)):
                found[TENSOR_NAMES[ttype].format(bid=bid) + WEIGHT_SUFFIX] = [(ttype, hf_name)]
        for _, layouts in family.split_modules:  # their parts go back joined (export), not by these names
            for parts in layouts:
                for t in parts:
                    found.pop(TENSOR_NAMES[t].format(bid=bid) + WEIGHT_SUFFIX, None)
    ambiguous = {g: c for g, c in found.items() if len(c) > 1}
    if ambiguous:
        raise ConversionError(f"{family.name}: the name table gives several Hugging Face modules for a tensor",
                              [f"{g}: {', '.join(n for _, n in c)}" for g, c in sorted(ambiguous.items())])
    return MappingProxyType({g: c[0] for g, c in found.items()})  # cached: read-only
