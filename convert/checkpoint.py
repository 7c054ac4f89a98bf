"""Read PEFT and MLX-LM LoRA checkpoints into one plain form, collecting every problem.

The common form is PEFT's layout: for a linear module A is (r, in) and B is (out, r);
for an embedding A is (r, vocab) and B is (hidden, r); ``y = W x + scale * B A x``
with ``scale`` the effective multiplier the training framework used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_lora.errors import CheckpointError, ConversionError
from edge_lora._validate import F16_MAX, is_number
from edge_lora.lora.pair import EMBEDDING, LINEAR, Layout

from .peft_config import PeftConfig
from .peft_variants import TRAINING_ONLY, BlockDiagonal, refused_tensor, training_only
from edge_lora.lora.scales import mlx_scale
from .tensors import read_safetensors, read_torch_bin, safetensors_dtypes



@dataclass(frozen=True)
class ParamTarget:
    """One parameter a ``target_parameters`` LoRA may adapt, with PEFT's rank and scale for it."""

    name: str  # "gate_up_proj"
    rank: int
    alpha: float
    scale: float


@dataclass
class LoraModule:
    """One adapted module in PEFT layout.

    A ``target_parameters`` LoRA (PEFT's ``lora.ParamWrapper`` on a 3-D expert parameter) has
    ``parameters``: the parameters of ``module`` it may adapt (several on one module are nested
    wrappers, told apart by their shapes against the base), ``a`` (E r, x) and ``b`` (y, E r)."""

    module: str  # "model.layers.3.self_attn.q_proj"
    kind: Layout  # linear or embedding
    a: np.ndarray
    b: np.ndarray
    scale: float  # effective multiplier of B @ A
    alpha: float  # the module's alpha as configured (PEFT) or scale * rank (MLX)
    sources: tuple[str, str]
    #: DoRA's magnitude m (out,), read only for merging (read_checkpoint(allow_dora=True))
    magnitude: np.ndarray | None = None
    parameters: tuple[ParamTarget, ...] = ()

    @property
    def rank(self) -> int:
        """The rank (a ``target_parameters`` LoRA: of all experts together, E r)."""
        return int(self.a.shape[0])

    @property
    def configured_rank(self) -> int:
        """The rank as configured (a ``target_parameters`` LoRA: each expert's, r)."""
        return self.parameters[0].rank if self.parameters else self.rank


@dataclass
class Checkpoint:
    """A LoRA checkpoint read into PEFT layout."""

    path: Path
    format: Literal["peft", "mlx"]
    config: dict[str, Any]
    modules: list[LoraModule]
    #: alpha to write as adapter.lora.alpha
    alpha: float
    provenance: dict[str, Any] = field(default_factory=dict)
    #: what the reader decided on the user's behalf (shown by the CLI, kept in ConvertResult.notes)
    notes: list[str] = field(default_factory=list)
    #: on a base whose output is the token embedding (tied weights), the trainer tied the
    #: embedding's LoRA to the output too (PEFT ``ensure_weight_tying``; MLX-LM's
    #: ``LoRAEmbedding.as_linear``, which tied models call for their output)
    ties_output: bool = False


#: weight files PEFT itself loads, in its order of preference (peft.utils.load_peft_weights)
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MLX_WEIGHTS = ("adapters.safetensors",)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def read_checkpoint(path: str | Path, *, adapter_name: str | None = None, text_only: bool = False,
                    base_vocab: int | None = None, allow_dora: bool = False) -> Checkpoint:
    """Read a PEFT or MLX-LM adapter: its folder, its ``adapter_config.json`` or its weights file.

    The format is decided by the config (PEFT's ``peft_type``/``r`` or MLX-LM's
    ``lora_parameters``), never by a file name. ``adapter_name`` picks one of several PEFT
    adapter names in one file; ``text_only`` drops vision/audio tower pairs of a multimodal
    checkpoint; ``base_vocab`` (the base's token count) lets a resized vocabulary be named as
    such. ``allow_dora`` reads DoRA magnitudes (PEFT ``use_dora``, MLX ``fine_tune_type: dora``)
    into :attr:`LoraModule.magnitude`: a DoRA adapter can be merged, never converted.
    Raises :class:`CheckpointError` / :class:`ConversionError` listing every problem.
    """
    folder, cfg, fmt, weights, notes = _locate(path)
    if fmt == "mlx":
        ckpt = _read_mlx(folder, cfg, weights, allow_dora)
    else:
        ckpt = _read_peft(folder, cfg, weights, adapter_name, text_only, base_vocab, allow_dora)
    ckpt.notes[:0] = notes
    return ckpt


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """The two files :func:`read_checkpoint` reads for ``path`` (folder, config or weights file):
    ``(adapter_config.json, weights file)``, found as it finds them, without reading the weights.
    Raises :class:`CheckpointError` as it does."""
    folder, _cfg, _fmt, weights, _notes = _locate(path)
    return folder / "adapter_config.json", weights


def _locate(path: str | Path) -> tuple[Path, dict[str, Any], Literal["peft", "mlx"], Path, list[str]]:
    """(folder, config, format, weights file, notes) of an adapter path."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: adapter path not found")
    weights: Path | None = None
    if p.is_file():
        if p.name == "adapter_config.json":
            folder = p.parent
        elif p.suffix in _WEIGHT_SUFFIXES:
            folder, weights = p.parent, p
        else:
            raise CheckpointError(f"{p}: give the adapter folder, its adapter_config.json or its weights file")
    else:
        folder = p
    cfg = _load_config(folder)
    fmt = _format_of(cfg, folder)
    notes: list[str] = []
    if weights is None:
        weights = _pick_weights(folder, PEFT_WEIGHTS if fmt == "peft" else MLX_WEIGHTS, notes)
    return folder, cfg, fmt, weights, notes


#: segments training wrappers add to a model's parameter names: torch.compile (``_orig_mod``), FSDP
#: (``_fsdp_wrapped_module``), activation checkpointing (``_checkpoint_wrapped_module``), and DDP's
#: leading ``module.``
_WRAPPERS = re.compile(r"(?:^|(?<=\.))(?:_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.|^module\.")


def _without_wrappers(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """``tensors`` with the training wrappers' name segments removed, and the segments seen."""
    seen: set[str] = set()
    out = {}
    for name, arr in tensors.items():
        found = _WRAPPERS.findall(name)
        seen.update(f.rstrip(".") for f in found)
        out[_WRAPPERS.sub("", name) if found else name] = arr
    return out, seen


def _format_of(cfg: dict[str, Any], folder: Path) -> Literal["peft", "mlx"]:
    mlx = "lora_parameters" in cfg or "fine_tune_type" in cfg
    peft = "peft_type" in cfg or "lora_alpha" in cfg or "r" in cfg
    if mlx and not peft:
        return "mlx"
    if peft and not mlx:
        return "peft"
    if mlx and peft:  # Unsloth's MLX saves carry peft_type too: the weights file decides
        has_mlx = any((folder / n).is_file() for n in MLX_WEIGHTS)
        has_peft = any((folder / n).is_file() for n in PEFT_WEIGHTS)
        if has_mlx != has_peft:
            return "mlx" if has_mlx else "peft"
    raise CheckpointError(
        f"{folder / 'adapter_config.json'}: cannot tell PEFT from MLX-LM "
        "(PEFT configs have peft_type, r and lora_alpha; MLX-LM configs have lora_parameters and fine_tune_type; "
        "with both, the one weights file decides: adapter_model.safetensors or adapters.safetensors)"
    )


def _pick_weights(folder: Path, preferred: tuple[str, ...], notes: list[str]) -> Path:
    """The weights file the framework itself would load; else the folder's only weights file."""
    found = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)
    for name in preferred:
        if (folder / name).is_file():
            others = [f.name for f in found if f.name != name]
            if others:
                notes.append(f"read {name} (the file PEFT/MLX-LM loads); also in the folder: {', '.join(others)}")
            return folder / name
    if len(found) == 1:
        notes.append(f"read {found[0].name}: the folder's only weights file (the usual name is {preferred[0]})")
        return found[0]
    if found:
        raise CheckpointError(
            f"{folder}: several weights files and none named {' or '.join(preferred)}: "
            f"{', '.join(f.name for f in found)}; give the one to convert as the path"
        )
    raise CheckpointError(
        f"{folder}: no adapter weights found", [f"searched {folder / n}" for n in preferred]
        + [f"searched {folder}/*{sfx}" for sfx in _WEIGHT_SUFFIXES]
    )


def _load_config(p: Path) -> dict[str, Any]:
    cfg_path = p / "adapter_config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: missing adapter config", [f"searched {cfg_path}"])
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{cfg_path}: malformed JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: malformed config (expected a JSON object)")
    return cfg


def _read_weights(weights: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    if weights.suffix == ".safetensors":
        return read_safetensors(weights), sorted(safetensors_dtypes(weights))
    return read_torch_bin(weights), ["torch"]


def nonfinite_problems(tensors: dict[str, np.ndarray]) -> list[str]:
    """One problem per tensor holding NaN or infinite values, or values beyond the f16 range
    (±65504: no trained LoRA factor is that large, and llama.cpp's f16 paths would overflow).
    One pass per tensor when all is well (its largest magnitude)."""
    out = []
    for name, arr in tensors.items():
        if arr.size == 0 or float(np.max(np.abs(arr))) <= F16_MAX:  # NaN fails the comparison
            continue
        finite = np.isfinite(arr)
        bad = int(arr.size - np.count_nonzero(finite))
        big = int(np.count_nonzero(np.abs(np.where(finite, arr, 0)) > F16_MAX))
        if bad:
            out.append(f"{name}: {bad} of {arr.size} values are NaN or infinite")
        if big:
            out.append(f"{name}: {big} of {arr.size} values are beyond ±65504 (the f16 range)")
    return out


# PEFT state-dict keys: "base_model.model.<module>.lora_A[.<adapter>].weight" (the prefix once per
# PeftModel wrapper: a model wrapped twice has it twice), embeddings "...lora_embedding_A[.<adapter>]";
# the adapter-name segment is in raw state dicts (save_pretrained strips it).
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)*(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?!weight$|bias$)(?P<adapter>[A-Za-z_][\w-]*))?(?P<suffix>\.weight|\.bias)?$"
)


_PEFT_MAGNITUDE = re.compile(
    r"^(?:base_model\.model\.)*(?P<module>.+?)\.lora_magnitude_vector(?:\.(?!weight$)(?P<adapter>[A-Za-z_][\w-]*))?"
    r"(?:\.weight)?$"
)


def _read_peft(p: Path, cfg: dict[str, Any], weights_file: Path, adapter_name: str | None,
               text_only: bool, base_vocab: int | None, allow_dora: bool = False) -> Checkpoint:
    config, problems = PeftConfig.from_dict(cfg, allow_dora=allow_dora)
    notes = [n for n in (config.fan_in_fan_out_note() if config else None,) if n]
    tensors, dtypes = _read_weights(weights_file)
    tensors, unwrapped = _without_wrappers(tensors)
    if unwrapped:
        notes.append(f"dropped training-wrapper segments ({', '.join(sorted(unwrapped))}) from the tensor names: "
                     "torch.compile / FSDP / DDP wrap the model they were saved from")
    empty = [name for name, arr in tensors.items() if arr.size == 0]
    if empty:
        problems.append(f"{len(empty)} of {len(tensors)} tensors have 0 elements ({empty[0]}, ...): a DeepSpeed ZeRO-3 "
                        "save whose parameters were not gathered; save again with the weights gathered "
                        "(stage3_gather_16bit_weights_on_model_save: true, or zero_to_fp32.py on the checkpoint)")
        tensors = {k: v for k, v in tensors.items() if v.size}
    problems += nonfinite_problems(tensors)
    parsed = []
    magnitudes: dict[str, np.ndarray] = {}
    dropped: dict[str, int] = {}
    for name, arr in tensors.items():
        seg = training_only(name)
        if seg is not None:
            field_ = TRAINING_ONLY[seg][0]
            if cfg.get(field_):
                dropped[seg] = dropped.get(seg, 0) + 1
            else:
                problems.append(f"{name}: {TRAINING_ONLY[seg][1].split(',')[0]}, but adapter_config.json has no "
                                f"{field_}: the config and the weights disagree")
            continue
        if refused_tensor(name, cfg):
            continue  # the config's refusal says why
        m = _PEFT_KEY.match(name)
        dm = _PEFT_MAGNITUDE.match(name) if allow_dora and m is None else None
        if dm is not None:
            if adapter_name is None or (dm["adapter"] or "") in ("", adapter_name):
                magnitudes[unwrap_text_model(dm["module"])[0]] = arr
            continue  # another adapter's magnitude: skipped as its factors are
        if m is None:
            problems.append(_classify_non_lora(name, arr, base_vocab))
            continue
        parsed.append((name, arr, m))
    names = sorted({m["adapter"] or "" for _, _, m in parsed})
    if adapter_name is not None:
        if adapter_name not in names:
            shown = ", ".join(repr(n) if n else "(none)" for n in names)
            raise CheckpointError(f"{weights_file}: no adapter named {adapter_name!r}; the file has: {shown}")
        parsed = [t for t in parsed if (t[2]["adapter"] or "") == adapter_name]
        notes.append(f"converted adapter {adapter_name!r} of {len(names)} in the file")
    elif len(names) > 1:
        counts = {n: sum(1 for t in parsed if (t[2]["adapter"] or "") == n) for n in names}
        shown = ", ".join(f"{n!r} ({c} tensors)" if n else f"unnamed ({c} tensors)" for n, c in counts.items())
        problems.append(f"the file holds several PEFT adapters: {shown}; pick one with --adapter-name NAME")
    pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]] = {}
    seen_as: dict[tuple[str, bool], str] = {}
    towers: dict[str, int] = {}
    for name, arr, m in parsed:
        if m["suffix"] == ".bias":
            problems.append(f"{name}: LoRA bias (lora_bias=True) is not supported by llama.cpp")
            continue
        if m["part"].startswith("lora_embedding") and m["suffix"]:
            problems.append(f"{name}: unexpected '.weight' on an embedding LoRA factor")
            continue
        module, tower = unwrap_text_model(m["module"])
        if module in _HEAD_ALIASES:
            note = f"{module}: the output head as {_HEAD_ALIASES[module]} names it: read as lm_head"
            notes += [note] if note not in notes else []
            module = "lm_head"
        if tower:
            towers[tower] = towers.get(tower, 0) + 1
            continue
        embedding = m["part"].startswith("lora_embedding")
        pairs.setdefault((module, embedding), {})[m["part"][-1]] = (name, arr)
        seen_as[module, embedding] = m["module"]  # the path PEFT matched its config against
    if towers:
        what = ", ".join(f"{t} ({n} tensors)" for t, n in sorted(towers.items()))
        if text_only:
            notes.append(f"--text-only: dropped the LoRA tensors of {what}; the text model's are converted")
        else:
            problems.append(f"LoRA on the multimodal towers {what}: a text GGUF base has no such layers; "
                            "pass --text-only to convert the text model's part alone")
    notes += [f"dropped {n} tensors of {TRAINING_ONLY[seg][1]}" for seg, n in sorted(dropped.items())]
    _expand_block_diagonal(cfg, pairs, seen_as, problems, notes)
    if cfg.get("ensure_weight_tying"):
        _drop_tied_head_copy(pairs, notes)
    modules = _pair_up(pairs, config, problems, seen_as)
    if allow_dora and config is not None:
        if magnitudes and not config.use_dora:
            problems.append(f"{len(magnitudes)} DoRA magnitudes (lora_magnitude_vector) but use_dora is not true in "
                            "adapter_config.json: PEFT would ignore them; fix the config or the file")
        else:
            modules = attach_magnitudes(modules, magnitudes, config.use_dora, problems)
    if problems or config is None:
        raise ConversionError(f"{p}: cannot {'read' if allow_dora else 'convert'} this PEFT adapter", problems)
    return Checkpoint(
        path=p,
        format="peft",
        config=cfg,
        modules=modules,
        alpha=config.lora_alpha,
        provenance={
            "source_format": "peft",
            "base_model": config.base_model_name_or_path,
            "target_modules": config.targets_text(),
            "weights_file": weights_file.name,
            "weights_dtypes": ",".join(dtypes),
            "peft_version": config.peft_version,
            "text_only": bool(towers) and text_only,
            "alora_invocation_tokens": list(config.alora_invocation_tokens),
        },
        notes=notes,
        ties_output=bool(cfg.get("ensure_weight_tying")),
    )


def _drop_tied_head_copy(pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]], notes: list[str]) -> None:
    """PEFT's ``ensure_weight_tying`` on a tied model saves the head's LoRA as the embedding's, tied
    (lm_head's A is embed_tokens' B transposed, its B their A transposed): that copy is dropped from
    ``pairs``, the embedding's LoRA standing for both. Factors that differ are an untied head's: kept."""
    emb = next((k for k in pairs if k[1] and k[0].endswith("embed_tokens")), None)
    head = next((k for k in pairs if not k[1] and k[0].rsplit(".", 1)[-1] == "lm_head"), None)
    if emb is None or head is None or set(pairs[emb]) != {"A", "B"} or set(pairs[head]) != {"A", "B"}:
        return
    (_, ea), (_, eb) = pairs[emb]["A"], pairs[emb]["B"]
    (_, ha), (_, hb) = pairs[head]["A"], pairs[head]["B"]
    if ha.shape == eb.T.shape and hb.shape == ea.T.shape and np.array_equal(ha, eb.T) and np.array_equal(hb, ea.T):
        notes.append(f"{head[0]}: the LoRA PEFT tied to {emb[0]}'s (ensure_weight_tying): the embedding's LoRA "
                     "stands for both")
        del pairs[head]


def _expand_block_diagonal(cfg: dict[str, Any], pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]],
                           seen_as: dict[tuple[str, bool], str], problems: list[str], notes: list[str]) -> None:
    """BD-LoRA (``use_bdlora``): each block-diagonal factor replaced, in ``pairs``, by its dense
    matrix (:meth:`BlockDiagonal.expand`), so the pair is an ordinary LoRA, exactly."""
    bd = BlockDiagonal.of(cfg)
    if bd is None:
        return
    n = 0
    for key, parts in pairs.items():
        path = seen_as.get(key, key[0])
        try:
            side = bd.side(path)
            if side is not None and side in parts:
                name, arr = parts[side]
                parts[side] = (name, bd.expand(path, side, arr))
                n += 1
        except ValueError as exc:
            problems.append(f"BD-LoRA: {exc}")
    notes.append(f"BD-LoRA: {n} block-diagonal factors (nblocks={bd.nblocks}) expanded to dense ones: the same "
                 "weights, as an ordinary LoRA")


#: module-path segments of the non-text towers of multimodal checkpoints
_TOWERS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "mm_projector", "audio_tower",
           "audio_model", "embed_vision", "embed_audio", "vision_embed_tokens")
#: text-model wrappers of multimodal checkpoints (Gemma 3 4B+, Llava, Mistral 3, transformers 5 layouts)
_TEXT_WRAPPERS = re.compile(r"^(?:model\.language_model\.|language_model\.model\.|language_model\.|model\.text_model\.)")


def unwrap_text_model(module: str) -> tuple[str, str | None]:
    """``(text-model module path, None)``, or ``(module, tower)`` for a vision/audio tower's module.

    ``model.language_model.layers.0.x`` and ``language_model.model.layers.0.x`` both become
    ``model.layers.0.x``, the text model's own path."""
    parts = module.split(".")
    for seg in _TOWERS:
        if seg in parts:
            return module, ".".join(parts[: parts.index(seg) + 1])
    m = _TEXT_WRAPPERS.match(module)
    rest = module[m.end():] if m else module
    if rest.startswith(("model.", "lm_head")):
        return rest, None
    if rest.split(".", 1)[0] in ("layers", "embed_tokens", "norm"):  # a bare decoder (AutoModel) or a wrapper's
        return "model." + rest, None
    return (("model." + rest) if m else module), None


def _classify_non_lora(name: str, arr: np.ndarray, base_vocab: int | None) -> str:
    shape = tuple(arr.shape)
    vocab_layer = ("embed_tokens" in name or "lm_head" in name or "wte" in name) and name.endswith(".weight")
    if vocab_layer and len(shape) == 2 and base_vocab is not None and shape[0] != base_vocab:
        return (f"{name}: the vocabulary was resized from {base_vocab} to {shape[0]} tokens (the full embedding/"
                f"lm_head is saved): an adapter cannot add tokens to a base. You need a base with those "
                f"{shape[0]} tokens: merge the adapter into the resized model (PEFT merge_and_unload), convert that "
                "model with llama.cpp's convert_hf_to_gguf.py, and use it as the base")
    if "lora_magnitude_vector" in name:
        return (f"{name}: DoRA (use_dora=True) cannot be a GGUF adapter (llama.cpp has no magnitude vector): "
                "merge it into the base with edge-lora merge")
    if "rotary_emb" in name or "inv_freq" in name or "rope_freqs" in name:
        return (f"{name}: a generated buffer (rotary embedding frequencies), not a trained weight; the file holds "
                "more than a LoRA adapter: save the PeftModel itself (save_pretrained) and convert that")
    if vocab_layer and ("modules_to_save" in name or ".base_layer." in name):
        return (f"{name}: a full {shape[0]}x{shape[1] if len(shape) > 1 else '?'} embedding/lm_head weight "
                "(modules_to_save or save_embedding_layers); if the vocabulary was not resized, re-save with "
                "save_pretrained(..., save_embedding_layers=False) and without modules_to_save"
                if len(shape) == 2 else f"{name}: a full weight that a llama.cpp adapter cannot carry")
    if ".base_layer." in name and name.endswith(".weight"):
        return (
            f"{name}: a saved base layer (PEFT's save_embedding_layers); a llama.cpp adapter cannot carry full "
            "weights. If the vocabulary was not resized, re-save with save_pretrained(..., save_embedding_layers=False)"
        )
    if "modules_to_save" in name or name.endswith(".weight"):
        return (
            f"{name}: a full weight (modules_to_save); llama.cpp adapters carry only LoRA factors: merge it into "
            "the base instead"
        )
    if name.endswith(".bias"):
        return f"{name}: a trained bias (bias='all' or 'lora_only') is not supported by llama.cpp adapters"
    if "trainable_tokens" in name:
        return f"{name}: trainable token deltas (trainable_token_indices) are not supported"
    return f"{name}: not a LoRA tensor this converter knows"


def _pair_up(
    pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]],
    config: PeftConfig | None,
    problems: list[str],
    seen_as: dict[tuple[str, bool], str] | None = None,
) -> list[LoraModule]:
    """The modules of ``pairs`` (by the text model's module path), their rank, alpha and targeting
    read from ``config`` as PEFT did: against the path PEFT saw (``seen_as``: a composite model's
    ``model.language_model.layers.N...``, which ``target_modules`` and the patterns may spell out)."""
    modules: list[LoraModule] = []
    for (module, embedding), sides in sorted(pairs.items()):
        peft_path = (seen_as or {}).get((module, embedding), module)
        if set(sides) != {"A", "B"}:
            have = next(iter(sides.values()))[0]
            missing = "B" if "A" in sides else "A"
            problems.append(f"{have}: lora_{missing} is missing for module {module}")
            continue
        (a_name, a), (b_name, b) = sides["A"], sides["B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            problems.append(
                f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a rank-r pair"
            )
            continue
        if config is None:
            continue  # its problems are reported; pairing problems are still collected
        unwrapped, peft_unwrapped = _BASE_LAYERS.sub("", module), _BASE_LAYERS.sub("", peft_path)
        # a module target_modules selects is a module LoRA (PEFT refuses to wrap both ways); the
        # parameter names of target_parameters are matched by suffix, as PEFT does, on the others
        wrapped = module != unwrapped or not (config.target_modules and config.is_targeted(peft_path))
        params = config.parameters_of(peft_unwrapped) if wrapped and not embedding else ()
        if params:
            targets = tuple(ParamTarget(n, *config.rank_and_alpha(f"{peft_unwrapped}.{n}"),
                                        config.module_scale(f"{peft_unwrapped}.{n}")) for n in params)
            fits = [t for t in targets if a.shape[0] % t.rank == 0]
            if not fits:
                problems.append(f"{module}: lora_A's {a.shape[0]} rows are no multiple of the configured rank of "
                                f"{', '.join(params)} ({', '.join(str(t.rank) for t in targets)})")
                continue
            weight = next((t for t in fits if t.name == "weight" and a.shape[0] == t.rank), None)
            if weight is not None:
                # a 2-D weight (a router's): PEFT multiplies it as lora.Linear does (one "expert");
                # the other names matched only by suffix (PEFT matches the module's real parameters)
                modules.append(LoraModule(unwrapped, LINEAR, a, b, weight.scale, weight.alpha, (a_name, b_name)))
                continue
            modules.append(LoraModule(unwrapped, LINEAR, a, b, fits[0].scale, fits[0].alpha, (a_name, b_name),
                                      parameters=tuple(fits)))
            continue
        r_cfg, alpha = config.rank_and_alpha(peft_path)
        if a.shape[0] != r_cfg:
            problems.append(f"{module}: tensor rank {a.shape[0]} differs from the configured rank {r_cfg}")
            continue
        if not config.is_targeted(peft_path):
            problems.append(f"{module}: has LoRA weights but is not selected by target_modules/layers_to_transform")
            continue
        scale = config.module_scale(peft_path)
        kind: Layout = EMBEDDING if embedding else LINEAR
        modules.append(LoraModule(module, kind, a, b, scale, float(alpha), (a_name, b_name)))
    if not modules and not problems:
        problems.append("no LoRA tensors found")
    return modules


#: other trainers' names of the output head (``lm_head``), and who uses them
_HEAD_ALIASES = {"model.unembed_tokens": "Tinker"}

#: PEFT's wrapper segments of a nested ``ParamWrapper`` (several parameters of one module)
_BASE_LAYERS = re.compile(r"(?:\.base_layer)+$")


def attach_magnitudes(modules: list[LoraModule], magnitudes: dict[str, np.ndarray], dora: bool,
                      problems: list[str]) -> list[LoraModule]:
    """DoRA: each module's magnitude ``m`` (out,) set on it; every mismatch reported."""
    by_module = {m.module: m for m in modules}
    for module in sorted(set(magnitudes) - set(by_module)):
        problems.append(f"{module}: a DoRA magnitude without LoRA factors")
    out = []
    for mod in modules:
        mag = magnitudes.get(mod.module)
        if mag is None:
            if dora:
                problems.append(f"{mod.module}: DoRA adapter without a magnitude for this module")
            out.append(mod)
        elif mod.kind != LINEAR:
            problems.append(f"{mod.module}: DoRA on an embedding is not supported (only linear layers)")
        elif mag.ndim != 1 or mag.shape != (mod.b.shape[0],):
            problems.append(f"{mod.module}: DoRA magnitude {mag.shape} does not match lora_B's {mod.b.shape[0]} outputs")
        else:
            out.append(replace(mod, magnitude=np.asarray(mag, dtype=np.float32)))
    return out


def _read_mlx(p: Path, cfg: dict[str, Any], weights_file: Path, allow_dora: bool = False) -> Checkpoint:
    problems: list[str] = []
    ftype = cfg.get("fine_tune_type", "lora")
    if ftype not in (("lora", "dora") if allow_dora else ("lora",)):
        problems.append(f"fine_tune_type={ftype!r}: only 'lora' adapters can be converted "
                        + ("('full' is not an adapter)" if allow_dora else
                           "(DoRA cannot be a GGUF adapter: merge it into the base with edge-lora merge)"))
    params = cfg.get("lora_parameters")
    if not isinstance(params, dict) or "rank" not in params or "scale" not in params:
        problems.append("adapter_config.json: lora_parameters with 'rank' and 'scale' is required")
        raise ConversionError(f"{p}: cannot convert this MLX-LM adapter", problems)
    raw_scale = params["scale"]
    if not is_number(raw_scale):
        problems.append(f"adapter_config.json: lora_parameters.scale must be a finite number, found {raw_scale!r}")
        raise ConversionError(f"{p}: cannot convert this MLX-LM adapter", problems)
    scale = mlx_scale(params)
    tensors, _ = _read_weights(weights_file)
    problems += nonfinite_problems(tensors)
    pairs: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    magnitudes: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        m = re.match(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)$", name)
        if m is None and allow_dora and ftype == "dora" and name.endswith(".m"):  # mlx_lm.tuner.dora.DoRALinear.m
            magnitudes[unwrap_text_model(name[:-2])[0]] = arr
            continue
        if m is None:
            problems.append(
                f"{name}: not a LoRA factor (MLX-LM DoRA magnitudes and full weights are not supported)"
            )
            continue
        module, _tower = unwrap_text_model(m["module"])
        pairs.setdefault(module, {})[m["part"][-1].upper()] = (name, arr)
    modules: list[LoraModule] = []
    for module, sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            have = next(iter(sides.values()))[0]
            problems.append(f"{have}: its {'lora_b' if 'A' in sides else 'lora_a'} is missing")
            continue
        (a_name, la), (b_name, lb) = sides["A"], sides["B"]
        if la.ndim != 2 or lb.ndim != 2 or la.shape[1] != lb.shape[0]:
            problems.append(f"{module}: lora_a {la.shape} and lora_b {lb.shape} do not form a rank-r pair")
            continue
        # MLX: linear z = (x @ lora_a) @ lora_b with lora_a (in, r); embedding z = lora_a[ids] @ lora_b
        # with lora_a (vocab, r). Both become PEFT's A (r, in|vocab), B (out|hidden, r) by transposing.
        kind: Layout = EMBEDDING if module.rsplit(".", 1)[-1] in ("embed_tokens", "wte", "tok_embeddings") else LINEAR
        rank = la.shape[1]
        modules.append(LoraModule(module, kind, la.T.copy(), lb.T.copy(), scale, scale * rank, (a_name, b_name)))
    if allow_dora:
        modules = attach_magnitudes(modules, magnitudes, ftype == "dora", problems)
    ranks = {m.rank for m in modules}
    if len(ranks) > 1:
        problems.append(f"MLX-LM adapters have one rank, this file has several: {sorted(ranks)}")
    if not modules and not problems:
        problems.append("no LoRA tensors found")
    if problems:
        raise ConversionError(f"{p}: cannot convert this MLX-LM adapter", problems)
    rank = ranks.pop()
    return Checkpoint(
        ties_output=True,  # tied MLX-LM models call embed_tokens.as_linear: its LoRA acts on the output too
        path=p,
        format="mlx",
        config=cfg,
        modules=modules,
        alpha=scale * rank,  # llama.cpp scales by alpha / rank = MLX's direct scale
        provenance={
            "source_format": "mlx-lm",
            "base_model": cfg.get("model") or "",
            "target_modules": ",".join(params.get("keys") or []),
            "weights_file": weights_file.name,
            "mlx_num_layers": str(cfg.get("num_layers", "")),
        },
    )
