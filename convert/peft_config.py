"""PEFT ``adapter_config.json`` semantics: validation, per-module rank/alpha, targeting.

The matching rules mirror PEFT's own (``peft.utils.other.get_pattern_key`` and
``peft.tuners.tuners_utils.check_target_module_exists``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from edge_lora.lora.scales import peft_scale

# Config fields whose non-default value changes the math in a way llama.cpp cannot carry.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA (use_dora=True): llama.cpp has no magnitude vector; merge it into the base with edge-lora merge",
    "lora_bias": "LoRA bias (lora_bias=True) is not supported by llama.cpp",
    "fan_in_fan_out": "fan_in_fan_out=True (Conv1D layers) is not supported",  # see fan_in_fan_out_note
    "layer_replication": "layer_replication changes the base's layer layout",
    "use_qalora": "QALoRA (use_qalora=True) is not supported",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported yet",
    "trainable_token_indices": "trainable token deltas (trainable_token_indices) are not supported",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not supported",
    "modules_to_save": "modules_to_save holds full trained weights, which a llama.cpp adapter cannot carry",
}

#: init_lora_weights values after which PEFT trains against a base it modified itself, so the
#: adapter is wrong on the original base (peft/tuners/lora/layer.py, LoraLayer.update_layer):
#: PiSSA, OLoRA, CorDA and LoRA-GA subtract scale * B0 @ A0 from W; LoftQ replaces W by a
#: quantized one. Values are matched as prefixes (pissa_niter_16).
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "lora_ga", "loftq")
#: values that leave the base alone: the adapter is an ordinary LoRA
_PLAIN_INITS = ("gaussian", "eva", "orthogonal", "mica")
_CONVERT_FIRST = (
    "convert it to an ordinary LoRA first: save the adapter PEFT initialised, before training, then "
    "model.save_pretrained(OUT, path_initial_model_for_weight_conversion=THAT_FOLDER) after training "
    "(PEFT computes the change as a plain rank-2r LoRA on the original base), and convert OUT"
)


def init_problem(value: Any) -> str | None:
    """Why an ``init_lora_weights`` value cannot be converted, or None when it can."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).lower()
    if text in _PLAIN_INITS:
        return None
    if text.startswith("loftq"):
        return ("adapter_config.json: init_lora_weights='loftq': LoftQ trains against a base PEFT replaced by a "
                "quantized one, so this adapter is wrong on the original base; use it with the base LoftQ saved "
                "(convert that base to GGUF) or retrain with init_lora_weights=True")
    if text.startswith(_BASE_CHANGING_INITS):
        return (f"adapter_config.json: init_lora_weights={value!r}: the adapter was trained against a base PEFT "
                "modified at initialisation (W - scale * B0 @ A0), so on the original base its outputs are wrong; "
                + _CONVERT_FIRST)
    return (f"adapter_config.json: init_lora_weights={value!r} is not an initialisation this converter knows "
            "(it may change the base, as PiSSA does); convert with a PEFT save whose init_lora_weights is true")


def _finite_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int beyond a float's range
        return False


def _regex_ok(pattern: Any) -> bool:
    try:
        re.compile(pattern)
        return True
    except (re.error, TypeError):
        return False


def type_problems(cfg: dict[str, Any]) -> list[str]:
    """Fields whose type or syntax PEFT itself would refuse (checked before they are used)."""
    out = []
    strs = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
    ints = lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)  # noqa: E731
    for key in ("target_modules", "exclude_modules"):
        v = cfg.get(key)
        if v is not None and not (isinstance(v, str) and _regex_ok(v)) and not strs(v):
            out.append(f"adapter_config.json: '{key}' must be a list of names or a valid regular expression, found {v!r}")
    v = cfg.get("layers_to_transform")
    if v is not None and not (isinstance(v, int) and not isinstance(v, bool)) and not ints(v):
        out.append(f"adapter_config.json: 'layers_to_transform' must be an integer or a list of them, found {v!r}")
    v = cfg.get("layers_pattern")
    if v is not None and not (isinstance(v, str) and _regex_ok(v)) and not (strs(v) and all(_regex_ok(x) for x in v)):
        out.append(f"adapter_config.json: 'layers_pattern' must be a name or a list of names, found {v!r}")
    for key in ("rank_pattern", "alpha_pattern"):
        for pat in (cfg.get(key) or {}) if isinstance(cfg.get(key), dict) else {}:
            if not _regex_ok(pat):
                out.append(f"adapter_config.json: {key} key {pat!r} is not a valid regular expression")
    return out


def config_problems(cfg: dict[str, Any], *, allow_dora: bool = False) -> list[str]:
    """Every reason this config cannot be converted (empty when it can); ``allow_dora``: for a
    merge, where DoRA is exact."""
    problems: list[str] = []
    peft_type = cfg.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        problems.append(f"adapter_config.json: peft_type={peft_type!r}; only LORA can be converted")
    r = cfg.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        problems.append(f"adapter_config.json: 'r' must be a positive integer, found {r!r}")
    alpha = cfg.get("lora_alpha")
    if not _finite_number(alpha):
        problems.append(f"adapter_config.json: 'lora_alpha' must be a finite number, found {alpha!r}")
    elif abs(alpha) > 65504:
        problems.append(f"adapter_config.json: 'lora_alpha'={alpha:g} is beyond ±65504: llama.cpp's f16 paths would overflow")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = cfg.get(key)
        if pattern is not None and not isinstance(pattern, dict):
            problems.append(f"adapter_config.json: '{key}' must be an object")
            continue
        for pat, v in (pattern or {}).items():
            if key == "rank_pattern" and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                problems.append(f"adapter_config.json: rank_pattern[{pat!r}] must be a positive integer, found {v!r}")
            elif key == "alpha_pattern" and not _finite_number(v):
                problems.append(f"adapter_config.json: alpha_pattern[{pat!r}] must be a finite number, found {v!r}")
    problems += type_problems(cfg)
    init = init_problem(cfg.get("init_lora_weights", True))
    if init:
        problems.append(init)
    for key, why in _UNSUPPORTED.items():
        if key == "fan_in_fan_out" or (key == "use_dora" and allow_dora):
            continue  # decided with the base's layer type (see fan_in_fan_out_note); DoRA merges exactly
        if cfg.get(key):
            problems.append(f"adapter_config.json: {why}")
    bias = cfg.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(f"adapter_config.json: bias={bias!r}: trained biases are not supported by llama.cpp adapters")
    return problems


def has_valid_rank_alpha(cfg: dict[str, Any]) -> bool:
    r = cfg.get("r")
    valid_r = isinstance(r, int) and not isinstance(r, bool) and r > 0
    patterns = [cfg.get(k) or {} for k in ("rank_pattern", "alpha_pattern")]
    if not all(isinstance(p, dict) for p in patterns):
        return False
    ranks_ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patterns[0].values())
    alphas_ok = all(_finite_number(v) for v in patterns[1].values())
    return valid_r and _finite_number(cfg.get("lora_alpha")) and ranks_ok and alphas_ok and not type_problems(cfg)


def fan_in_fan_out_note(cfg: dict[str, Any]) -> str | None:
    """PEFT ignores ``fan_in_fan_out`` on ``nn.Linear`` layers (it warns and resets the flag),
    and every architecture this converter supports is built of ``nn.Linear``: a note, not a refusal."""
    if not cfg.get("fan_in_fan_out"):
        return None
    return ("fan_in_fan_out=true ignored: the supported architectures use nn.Linear layers, for which PEFT "
            "resets the flag (it applies to GPT-2-style Conv1D only)")


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
