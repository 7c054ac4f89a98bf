"""PEFT's adapter_config.json read into a typed PeftConfig, with PEFT's own matching rules
(peft.utils.other.get_pattern_key, peft.tuners.tuners_utils.check_target_module_exists)."""

from __future__ import annotations

import math

import pytest

from edge_lora_convert.peft_config import PeftConfig, init_problem

BASE = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
Q0, V1, K0 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.0.self_attn.k_proj"


def _cfg(**changes) -> PeftConfig:
    config, problems = PeftConfig.from_dict({**BASE, **changes})
    assert problems == [] and config is not None
    return config


def test_typed_fields_and_scales():
    c = _cfg(use_rslora=True, base_model_name_or_path="meta-llama/Llama-3.2-1B")
    assert (c.r, c.lora_alpha, c.target_modules) == (8, 16.0, ("q_proj", "v_proj"))
    assert c.module_scale(Q0) == pytest.approx(16 / math.sqrt(8))
    assert _cfg().module_scale(Q0) == 2.0 and c.base_model_name_or_path == "meta-llama/Llama-3.2-1B"
    assert c.targets_text() == "q_proj,v_proj"


def test_patterns_match_as_peft_does():
    c = _cfg(rank_pattern={"v_proj": 4, r"layers\.0\.self_attn\.q_proj": 2}, alpha_pattern={"q_proj": 32})
    assert c.rank_and_alpha(V1) == (4, 16.0)
    assert c.rank_and_alpha(Q0) == (2, 32.0)
    assert c.rank_and_alpha("model.layers.1.self_attn.q_proj") == (8, 32.0)
    assert c.rank_and_alpha("model.layers.0.self_attn.xq_proj") == (8, 16.0)  # a suffix must start at a dot


@pytest.mark.parametrize("changes, module, selected", [
    ({}, Q0, True), ({}, K0, False),
    ({"target_modules": "all-linear"}, K0, True),
    ({"target_modules": r".*\.(q|k)_proj"}, K0, True), ({"target_modules": r".*\.(q|k)_proj"}, V1, False),
    ({"target_modules": None}, K0, True),  # PEFT's defaults: the tensors are the truth
    ({"layers_to_transform": [1]}, Q0, False), ({"layers_to_transform": 1}, V1, True),
    ({"layers_to_transform": [0], "layers_pattern": "layers"}, Q0, True),
    ({"exclude_modules": ["q_proj"]}, Q0, False), ({"exclude_modules": r".*layers\.1.*"}, V1, False),
    ({"target_modules": [Q0]}, Q0, True),
])
def test_targeting(changes, module, selected):
    assert _cfg(**changes).is_targeted(module) is selected


def test_every_problem_at_once_and_no_config_without_a_rank():
    config, problems = PeftConfig.from_dict({"peft_type": "PREFIX", "r": 0, "lora_alpha": float("nan"),
                                            "rank_pattern": {"x": True}, "use_dora": True, "bias": "all"})
    assert config is None
    for needle in ("peft_type", "'r'", "lora_alpha", "rank_pattern", "DoRA", "bias"):
        assert any(needle in p for p in problems), needle
    config, problems = PeftConfig.from_dict({**BASE, "lora_alpha": 1e6})
    assert config is not None and any("beyond ±65504" in p for p in problems)


def test_dora_is_allowed_for_merging_only():
    assert PeftConfig.from_dict({**BASE, "use_dora": True})[1]
    config, problems = PeftConfig.from_dict({**BASE, "use_dora": True}, allow_dora=True)
    assert problems == [] and config.use_dora


def test_inits_that_change_the_base_are_named():
    assert init_problem(True) is None and init_problem("gaussian") is None
    assert "LoftQ" in init_problem("loftq")
    assert "modified at initialisation" in init_problem("pissa_niter_16")
    assert "not an initialisation" in init_problem("magic")


def test_fan_in_fan_out_is_a_note():
    c = _cfg(fan_in_fan_out=True)
    assert "ignored" in c.fan_in_fan_out_note() and _cfg().fan_in_fan_out_note() is None
