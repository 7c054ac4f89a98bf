"""PEFT ``adapter_config.json`` semantics: validation, then a typed :class:`PeftConfig` with the
per-module rank/alpha and targeting rules.

The matching rules mirror PEFT's own (``peft.utils.other.get_pattern_key`` and
``peft.tuners.tuners_utils.check_target_module_exists``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edge_lora._validate import f16_problem, is_int, is_number
from edge_lora.lora.scales import peft_scale

from .peft_variants import variant_problems

# Config fields whose non-default value changes the math in a way llama.cpp cannot carry.
_UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA (use_dora=True): llama.cpp has no magnitude vector; merge it into the base with edge-lora merge",
    "lora_bias": "LoRA bias (lora_bias=True) is not supported by llama.cpp",
    "fan_in_fan_out": "fan_in_fan_out=True (Conv1D layers) is not supported",  # see fan_in_fan_out_note
    "layer_replication": "layer_replication changes the base's layer layout",
    "use_qalora": "QALoRA (use_qalora=True) is not supported",
    "trainable_token_indices": "trainable token deltas (trainable_token_indices) are not supported",
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
    ints = lambda v: isinstance(v, list) and all(is_int(x) for x in v)  # noqa: E731
    for key in ("target_modules", "exclude_modules"):
        v = cfg.get(key)
        if v is not None and not (isinstance(v, str) and _regex_ok(v)) and not strs(v):
            out.append(f"adapter_config.json: '{key}' must be a list of names or a valid regular expression, found {v!r}")
    v = cfg.get("alora_invocation_tokens")
    if v is not None and not (ints(v) and v and all(x >= 0 for x in v)):
        out.append(f"adapter_config.json: 'alora_invocation_tokens' must be a non-empty list of token ids, found {v!r}")
    v = cfg.get("target_parameters")
    if v is not None and not strs(v):
        out.append(f"adapter_config.json: 'target_parameters' must be a list of parameter names, found {v!r}")
    v = cfg.get("layers_to_transform")
    if v is not None and not is_int(v) and not ints(v):
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
    if not is_int(r) or r <= 0:
        problems.append(f"adapter_config.json: 'r' must be a positive integer, found {r!r}")
    alpha = cfg.get("lora_alpha")
    if not is_number(alpha):
        problems.append(f"adapter_config.json: 'lora_alpha' must be a finite number, found {alpha!r}")
    elif f16_problem("'lora_alpha'", alpha):
        problems.append("adapter_config.json: " + str(f16_problem("'lora_alpha'", alpha)))
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = cfg.get(key)
        if pattern is not None and not isinstance(pattern, dict):
            problems.append(f"adapter_config.json: '{key}' must be an object")
            continue
        for pat, v in (pattern or {}).items():
            if key == "rank_pattern" and not (is_int(v) and v > 0):
                problems.append(f"adapter_config.json: rank_pattern[{pat!r}] must be a positive integer, found {v!r}")
            elif key == "alpha_pattern" and not is_number(v):
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
    if cfg.get("invocation_string") and not cfg.get("alora_invocation_tokens"):
        problems.append("adapter_config.json: an aLoRA with an invocation_string but no alora_invocation_tokens: "
                        "tokenize the string with the base model's tokenizer and save the ids as alora_invocation_tokens")
    problems += variant_problems(cfg)
    bias = cfg.get("bias", "none")
    if bias not in (None, "none"):
        problems.append(f"adapter_config.json: bias={bias!r}: trained biases are not supported by llama.cpp adapters")
    return problems


@dataclass(frozen=True)
class PeftConfig:
    """``adapter_config.json`` read once (PEFT's ``LoraConfig`` field names), its fields typed:
    everything after :meth:`from_dict` reads these, never the raw dict. The rules mirror PEFT's
    own (``peft.utils.other.get_pattern_key``, ``peft.tuners.tuners_utils.check_target_module_exists``)."""

    r: int
    lora_alpha: float
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    #: None: PEFT filled in its per-architecture defaults (the tensors are the truth); a string
    #: is a regular expression or ``all-linear``
    target_modules: str | tuple[str, ...] | None = None
    exclude_modules: str | tuple[str, ...] | None = None
    layers_to_transform: int | tuple[int, ...] | None = None
    layers_pattern: str | tuple[str, ...] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    base_model_name_or_path: str = ""
    peft_version: str = ""
    #: activated LoRA (aLoRA): the token ids from which on the adapter acts (PEFT
    #: ``alora_invocation_tokens``); empty for a plain LoRA
    alora_invocation_tokens: tuple[int, ...] = ()
    #: parameters adapted directly (``lora.ParamWrapper``: transformers 5's 3-D expert weights),
    #: as configured: ``gate_up_proj`` or ``mlp.experts.gate_up_proj``
    target_parameters: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], *, allow_dora: bool = False) -> tuple[PeftConfig | None, list[str]]:
        """``(config, problems)``: every reason the config cannot be converted (:func:`config_problems`),
        and the typed config, or None when its rank, alpha, patterns or targeting fields are
        themselves invalid (nothing can be paired with them)."""
        problems = config_problems(cfg, allow_dora=allow_dora)
        r, alpha = cfg.get("r"), cfg.get("lora_alpha")
        patterns = [cfg.get(k) or {} for k in ("rank_pattern", "alpha_pattern")]
        usable = (is_int(r) and r > 0 and is_number(alpha) and all(isinstance(p, dict) for p in patterns)
                  and all(is_int(v) and v > 0 for v in patterns[0].values())
                  and all(is_number(v) for v in patterns[1].values()) and not type_problems(cfg))
        if not usable:
            return None, problems

        def names(v: Any) -> str | tuple[str, ...] | None:
            return v if v is None or isinstance(v, str) else tuple(v)

        layers = cfg.get("layers_to_transform")
        config = cls(
            r=int(r), lora_alpha=float(alpha),
            rank_pattern={k: int(v) for k, v in patterns[0].items()},
            alpha_pattern={k: float(v) for k, v in patterns[1].items()},
            target_modules=names(cfg.get("target_modules")), exclude_modules=names(cfg.get("exclude_modules")) or None,
            layers_to_transform=None if layers is None or layers == [] else layers if isinstance(layers, int) else tuple(layers),
            layers_pattern=names(cfg.get("layers_pattern")) or None,
            use_rslora=bool(cfg.get("use_rslora", False)), use_dora=bool(cfg.get("use_dora", False)),
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
            base_model_name_or_path=str(cfg.get("base_model_name_or_path") or ""),
            peft_version=str(cfg.get("peft_version") or ""),
            target_parameters=tuple(cfg.get("target_parameters") or ()),
            alora_invocation_tokens=tuple(int(x) for x in cfg.get("alora_invocation_tokens") or ()),
        )
        return config, problems

    def rank_and_alpha(self, module: str) -> tuple[int, float]:
        """The rank and alpha PEFT gives ``module`` (rank_pattern / alpha_pattern first)."""
        rk, ak = _pattern_key(self.rank_pattern, module), _pattern_key(self.alpha_pattern, module)
        return (self.rank_pattern[rk] if rk is not None else self.r,
                self.alpha_pattern[ak] if ak is not None else self.lora_alpha)

    def module_scale(self, module: str) -> float:
        """PEFT's multiplier of ``B @ A`` for ``module`` (:func:`~edge_lora.lora.scales.peft_scale`)."""
        r, alpha = self.rank_and_alpha(module)
        return peft_scale(alpha, r, self.use_rslora)

    def is_targeted(self, module: str) -> bool:
        """Whether PEFT's config selects ``module`` (target_modules, layers_to_transform, exclude_modules)."""
        excl = self.exclude_modules
        if excl:
            if isinstance(excl, str) and re.fullmatch(excl, module):
                return False
            if not isinstance(excl, str) and (module in excl or any(module.endswith(f".{e}") for e in excl)):
                return False
        targets = self.target_modules
        if targets is None:
            return True  # PEFT filled in its per-architecture defaults; the tensors are the truth
        if isinstance(targets, str):
            return targets == "all-linear" or re.fullmatch(targets, module) is not None
        if module in targets:
            return True
        if not any(module.endswith(f".{t}") for t in targets):
            return False
        if self.layers_to_transform is None:
            return True
        idx = self._layer_index(module)
        if idx is None:
            return False
        layers = self.layers_to_transform
        return idx == layers if isinstance(layers, int) else idx in layers

    def parameters_of(self, module: str) -> tuple[str, ...]:
        """The names of ``module``'s parameters that ``target_parameters`` selects, as PEFT matches
        them (``BaseTuner._inject_parameters``: ``f"{module}.{name}"`` equal to a target or ending
        in ``"." + target``); ``module`` is the unwrapped path (no ``base_layer``)."""
        out = []
        for target in self.target_parameters:
            name = target.rpartition(".")[2]
            key = f"{module}.{name}"
            if (key == target or key.endswith("." + target)) and name not in out:
                out.append(name)
        return tuple(out)

    def _layer_index(self, module: str) -> int | None:
        if not self.layers_pattern:
            m = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            m = None
            for pat in [self.layers_pattern] if isinstance(self.layers_pattern, str) else self.layers_pattern:
                m = re.match(rf"(?:^|.*?\.){pat}\.(?P<idx>\d+)\.", module)
                if m is not None:
                    break
        return int(m["idx"]) if m else None

    def targets_text(self) -> str:
        t = self.target_modules
        return "" if t is None else t if isinstance(t, str) else ",".join(sorted(t))

    def fan_in_fan_out_note(self) -> str | None:
        """PEFT ignores ``fan_in_fan_out`` on ``nn.Linear`` layers (it warns and resets the flag),
        and every architecture this converter supports is built of ``nn.Linear``: a note, not a refusal."""
        if not self.fan_in_fan_out:
            return None
        return ("fan_in_fan_out=true ignored: the supported architectures use nn.Linear layers, for which PEFT "
                "resets the flag (it applies to GPT-2-style Conv1D only)")


def _pattern_key(patterns: dict[str, Any], key: str) -> str | None:
    for pat in patterns:
        if re.match(rf"(.*\.)?({pat})$", key):
            return pat
    return None
