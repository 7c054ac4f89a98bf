"""Read PEFT and MLX-LM LoRA checkpoints into one plain form, collecting every problem.

The common form is PEFT's layout: for a linear module A is (r, in) and B is (out, r);
for an embedding A is (r, vocab) and B is (hidden, r); ``y = W x + scale * B A x``
with ``scale`` the effective multiplier the training framework used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_lora.errors import CheckpointError, ConversionError

from . import peft_config
from .scales import mlx_scale
from .tensors import read_safetensors, read_torch_bin, safetensors_dtypes

Kind = Literal["linear", "embedding"]


@dataclass
class LoraModule:
    """One adapted module in PEFT layout."""

    module: str  # "model.layers.3.self_attn.q_proj"
    kind: Kind
    a: np.ndarray
    b: np.ndarray
    scale: float  # effective multiplier of B @ A
    alpha: float  # the module's alpha as configured (PEFT) or scale * rank (MLX)
    sources: tuple[str, str]

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


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


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a PEFT or MLX-LM adapter directory. Raises CheckpointError/ConversionError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: adapter path not found")
    if p.is_file():
        raise CheckpointError(
            f"{p}: expected an adapter directory (PEFT: adapter_config.json + adapter_model.safetensors; "
            "MLX-LM: adapter_config.json + adapters.safetensors)"
        )
    if (p / "adapters.safetensors").exists():
        return _read_mlx(p)
    if (p / "adapter_model.safetensors").exists() or (p / "adapter_model.bin").exists():
        return _read_peft(p)
    raise CheckpointError(
        f"{p}: no adapter weights found (expected adapter_model.safetensors, adapter_model.bin "
        "or MLX-LM's adapters.safetensors)"
    )


def _load_config(p: Path) -> dict[str, Any]:
    cfg_path = p / "adapter_config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{cfg_path}: missing adapter config")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: malformed JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: malformed config (expected a JSON object)")
    return cfg


# PEFT state-dict keys: "base_model.model.<module>.lora_A[.<adapter>].weight", embeddings
# "…lora_embedding_A[.<adapter>]"; the adapter segment appears in some raw saves.
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.(?!weight$|bias$)(?P<adapter>[A-Za-z_][\w-]*))?(?P<suffix>\.weight|\.bias)?$"
)


def _read_peft(p: Path) -> Checkpoint:
    cfg = _load_config(p)
    problems = peft_config.config_problems(cfg)
    st = p / "adapter_model.safetensors"
    if st.exists():
        tensors, weights_file, dtypes = read_safetensors(st), st, sorted(safetensors_dtypes(st))
    else:
        weights_file = p / "adapter_model.bin"
        tensors, dtypes = read_torch_bin(weights_file), ["torch"]
    pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]] = {}
    for name, arr in tensors.items():
        m = _PEFT_KEY.match(name)
        if m is None:
            problems.append(_classify_non_lora(name))
            continue
        if m["suffix"] == ".bias":
            problems.append(f"{name}: LoRA bias (lora_bias=True) is not supported by llama.cpp")
            continue
        if m["part"].startswith("lora_embedding") and m["suffix"]:
            problems.append(f"{name}: unexpected '.weight' on an embedding LoRA factor")
            continue
        embedding = m["part"].startswith("lora_embedding")
        side = m["part"][-1]
        pairs.setdefault((m["module"], embedding), {})[side] = (name, arr)
    modules = _pair_up(pairs, cfg, problems)
    if problems:
        raise ConversionError(f"{p}: cannot convert this PEFT adapter", problems)
    return Checkpoint(
        path=p,
        format="peft",
        config=cfg,
        modules=modules,
        alpha=float(cfg["lora_alpha"]),
        provenance={
            "source_format": "peft",
            "base_model": cfg.get("base_model_name_or_path") or "",
            "target_modules": peft_config.targets_text(cfg),
            "weights_file": weights_file.name,
            "weights_dtypes": ",".join(dtypes),
            "peft_version": cfg.get("peft_version") or "",
        },
    )


def _classify_non_lora(name: str) -> str:
    if "lora_magnitude_vector" in name:
        return f"{name}: DoRA (use_dora=True) is not supported: llama.cpp has no magnitude vector"
    if ".base_layer." in name and name.endswith(".weight"):
        return (
            f"{name}: a saved embedding layer (PEFT's save_embedding_layers, on by default when embeddings "
            "are targeted); a llama.cpp adapter cannot carry full weights. If the vocabulary was not "
            "resized, re-save with save_pretrained(..., save_embedding_layers=False)"
        )
    if "modules_to_save" in name or name.endswith(".weight"):
        return (
            f"{name}: a full weight (modules_to_save or a saved embedding layer); llama.cpp adapters "
            "carry only LoRA factors: merge it into the base instead"
        )
    if name.endswith(".bias"):
        return f"{name}: a trained bias (bias='all' or 'lora_only') is not supported by llama.cpp adapters"
    if "trainable_tokens" in name:
        return f"{name}: trainable token deltas (trainable_token_indices) are not supported"
    return f"{name}: not a LoRA tensor this converter knows"


def _pair_up(
    pairs: dict[tuple[str, bool], dict[str, tuple[str, np.ndarray]]],
    cfg: dict[str, Any],
    problems: list[str],
) -> list[LoraModule]:
    modules: list[LoraModule] = []
    for (module, embedding), sides in sorted(pairs.items()):
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
        if not peft_config.has_valid_rank_alpha(cfg):
            continue  # already reported; pairing problems are still collected
        r_cfg, alpha = peft_config.rank_and_alpha(cfg, module)
        if a.shape[0] != r_cfg:
            problems.append(f"{module}: tensor rank {a.shape[0]} differs from the configured rank {r_cfg}")
            continue
        if not peft_config.is_targeted(cfg, module):
            problems.append(f"{module}: has LoRA weights but is not selected by target_modules/layers_to_transform")
            continue
        scale = peft_config.module_scale(cfg, alpha, r_cfg)
        kind: Kind = "embedding" if embedding else "linear"
        modules.append(LoraModule(module, kind, a, b, scale, float(alpha), (a_name, b_name)))
    if not modules and not problems:
        problems.append("no LoRA tensors found")
    return modules


def _read_mlx(p: Path) -> Checkpoint:
    cfg = _load_config(p)
    problems: list[str] = []
    ftype = cfg.get("fine_tune_type", "lora")
    if ftype != "lora":
        problems.append(f"fine_tune_type={ftype!r}: only 'lora' adapters can be converted (DoRA and full are not)")
    params = cfg.get("lora_parameters")
    if not isinstance(params, dict) or "rank" not in params or "scale" not in params:
        problems.append("adapter_config.json: lora_parameters with 'rank' and 'scale' is required")
        raise ConversionError(f"{p}: cannot convert this MLX-LM adapter", problems)
    scale = mlx_scale(params)
    tensors = read_safetensors(p / "adapters.safetensors")
    pairs: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for name, arr in tensors.items():
        m = re.match(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b)$", name)
        if m is None:
            problems.append(
                f"{name}: not a LoRA factor (MLX-LM DoRA magnitudes and full weights are not supported)"
            )
            continue
        pairs.setdefault(m["module"], {})[m["part"][-1].upper()] = (name, arr)
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
        kind: Kind = "embedding" if module.rsplit(".", 1)[-1] in ("embed_tokens", "wte", "tok_embeddings") else "linear"
        rank = la.shape[1]
        modules.append(LoraModule(module, kind, la.T.copy(), lb.T.copy(), scale, scale * rank, (a_name, b_name)))
    ranks = {m.rank for m in modules}
    if len(ranks) > 1:
        problems.append(f"MLX-LM adapters have one rank, this file has several: {sorted(ranks)}")
    if not modules and not problems:
        problems.append("no LoRA tensors found")
    if problems:
        raise ConversionError(f"{p}: cannot convert this MLX-LM adapter", problems)
    rank = ranks.pop()
    return Checkpoint(
        path=p,
        format="mlx",
        config=cfg,
        modules=modules,
        alpha=scale * rank,  # llama.cpp scales by alpha / rank = MLX's direct scale
        provenance={
            "source_format": "mlx-lm",
            "base_model": cfg.get("model") or "",
            "target_modules": ",".join(params.get("keys") or []),
            "weights_file": "adapters.safetensors",
            "mlx_num_layers": str(cfg.get("num_layers", "")),
        },
    )
