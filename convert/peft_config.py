"""PEFT ``adapter_config.json`` semantics: validation, per-module rank/alpha, targeting.

The matching rules mirror PEFT's own (``peft.utils.other.get_pattern_key`` and
``peft.tuners.tuners_utils.check_target_module_exists``).
"""

from __future__ import annotations

import re
from typing import Any

from .scales import peft_scale

# Config fields whose non-default value changes the math in a way llama.cpp cannot carry.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA (use_dora=True): llama.cpp has no magnitude vector",
    "lora_bias": "LoRA bias (lora_bias=True) is not supported by llama.cpp",
    "fan_in_fan_out": "fan_in_fan_out=True (Conv1D layers) is not supported",
    "layer_replication": "layer_replication changes the base's layer layout",
    "use_qalora": "QALoRA (use_qalora=True) is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported yet",
    "trainable_token_indices": "trainable token deltas (trainable_token_indices) are not supported",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not supported",
    "modules_to_save": "modules_to_save holds full trained weights, which a llama.cpp adapter cannot carry",
}


def config_problems(cfg: dict[str, Any]) -> list[str]:
    """Every reason this config cannot be converted (empty when it can)."""
    problems: list[str] = []
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        problems.append(f"adapter_config.json: peft_type={peft_type!r}; only LORA can be converted")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        problems.append(f"adapter_config.json: 'r' must be a positive integer, found {r!r}")
    alpha = cfg.get("lora_alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        problems.append(f"adapter_config.json: 'lora_alpha' must be a number, found {alpha!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), dict):
            problems.append(f"adapter_config.json: '{key}' must be an object")
    for key, why in _UNSUPPORTED.items():
        if cfg.get(key):
            problems.append(f"adapter_config.json: {why}")
    bias = cfg.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(f"adapter_config.json: bias={bias!r}: trained biases are not supported by llama.cpp adapters")
    return problems


def has_valid_rank_alpha(cfg: dict[str, Any]) -> bool:
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    valid_r = isinstance(r, int) and not isinstance(r, bool) and r > 0
    valid_alpha = isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
    patterns_ok = all(isinstance(cfg.get(k) or {}, dict) for k in ("rank_pattern", "alpha_pattern"))
    return valid_r and valid_alpha and patterns_ok


def _pattern_key(patterns: dict[str, Any], key: str) -> str | None:
    for pat in patterns:
        if re.match(rf"(.*\.)?({pat})$", key):
            return pat
    return None


def rank_and_alpha(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """The rank and alpha PEFT gives ``module`` (rank_pattern / alpha_pattern first)."""
    ranks = cfg.get("rank_pattern") or {}
    alphas = cfg.get("alpha_pattern") or {}
    rk, ak = _pattern_key(ranks, module), _pattern_key(alphas, module)
    r = ranks[rk] if rk is not None else cfg["r"]
    alpha = alphas[ak] if ak is not None else cfg["lora_alpha"]
    return int(r), float(alpha)


def module_scale(cfg: dict[str, Any], alpha: float, rank: int) -> float:
    return peft_scale(alpha, rank, bool(cfg.get("use_rslora", False)))


def _layer_index(cfg: dict[str, Any], module: str) -> int | None:
    patterns = cfg.get("layers_pattern")
    if not patterns:
        m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        m = None
        for pat in [patterns] if isinstance(patterns, str) else patterns:
            m = re.match(rf"(?:^|.*?\.){pat}\.(?P<idx>\d+)\.", module)
            if m is not None:
                break
    return int(m["idx"]) if m else None


def is_targeted(cfg: dict[str, Any], module: str) -> bool:
    """Whether PEFT's config selects ``module`` (target_modules, layers_to_transform, exclude_modules)."""
    excl = cfg.get("exclude_modules")
    if excl:
        if isinstance(excl, str) and re.fullmatch(excl, module):
            return False
        if not isinstance(excl, str) and (module in excl or any(module.endswith(f".{e}") for e in excl)):
            return False
    targets = cfg.get("target_modules")
    if targets is None:
        return True  # PEFT filled in its per-architecture defaults; the tensors are the truth
    if isinstance(targets, str):
        if targets == "all-linear":
            return True
        return re.fullmatch(targets, module) is not None
    if module in targets:
        return True
    if not any(module.endswith(f".{t}") for t in targets):
        return False
    layers = cfg.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    idx = _layer_index(cfg, module)
    if idx is None:
        return False
    return idx == layers if isinstance(layers, int) else idx in layers


def targets_text(cfg: dict[str, Any]) -> str:
    targets = cfg.get("target_modules")
    if targets is None:
        return ""
    return targets if isinstance(targets, str) else ",".join(sorted(targets))
