"""PEFT's LoRA variants as trainers save them (peft_variants.py's table): VeLoRA and MonteCLoRA are
a plain LoRA at inference and convert (their training-only tensors dropped); BD-LoRA's
block-diagonal factors expand exactly to dense ones (with --arch too, never a wrong shape);
KaSA is refused by name. Against transformers + PEFT in eval mode: relative error <= 1e-3 on the
logits (llama.cpp, f32 base), the adapter moving them by > 0.05."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from adapters import make_peft_adapter, peft_logits
from peft.tuners.lora.config import BdLoraConfig, KasaConfig, MontecloraConfig, VeloraConfig
from tiny_models import TOKENS, hf_logits, llama_logits, rel_err

from edge_lora.errors import ConversionError
from edge_lora.formats.gguf_file import read_gguf
from edge_lora_convert import convert

RTOL, MIN_EFFECT = 1e-3, 0.05
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BD = BdLoraConfig(target_modules_bd_a=["o_proj", "down_proj"], target_modules_bd_b=["q_proj", "k_proj", "v_proj",
                  "gate_proj", "up_proj"], nblocks=2)


@pytest.mark.parametrize("variant,extra,note", [
    ("velora", dict(velora_config=VeloraConfig()), "lora_velora_embed"),
    ("monteclora", dict(monteclora_config=MontecloraConfig()), "lora_monteclora_sampler"),
    ("bdlora", dict(use_bdlora=BD), "block-diagonal factors (nblocks=2) expanded"),
])
@pytest.mark.parametrize("case", ["llama2", "qwen3"])
def test_variants_that_are_a_plain_lora_at_inference_match_peft(tiny, tmp_path, case, variant, extra, note):
    t = tiny(case)
    ref = make_peft_adapter(t.model, tmp_path / variant, dict(r=4, lora_alpha=8, target_modules=TARGETS, **extra),
                            seed=11)
    res = convert(tmp_path / variant, base=t.base_path, out=tmp_path / "a.gguf", outtype="f32")
    assert any(note in n for n in res.notes), res.notes
    want = peft_logits(ref, TOKENS)
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    err = rel_err(llama_logits(t.base_path, TOKENS, tmp_path / "a.gguf"), want)
    print(f"{variant} on {case}: {err:.2e}")
    assert err <= RTOL


def test_bdlora_without_a_base_has_the_dense_shapes(tiny, tmp_path):
    """--arch (no base to check shapes against): the block-diagonal A of o_proj/down_proj, stored
    (r, in / nblocks), must come out (r, in), as with the base."""
    t = tiny("qwen3")
    make_peft_adapter(t.model, tmp_path / "bd", dict(r=4, lora_alpha=8, target_modules=TARGETS, use_bdlora=BD), seed=3)
    convert(tmp_path / "bd", base=t.base_path, out=tmp_path / "base.gguf", outtype="f32")
    convert(tmp_path / "bd", arch="qwen3", out=tmp_path / "arch.gguf", outtype="f32")
    a = {x.name: np.array(x.data) for x in gguf.GGUFReader(tmp_path / "base.gguf").tensors}
    b = {x.name: np.array(x.data) for x in gguf.GGUFReader(tmp_path / "arch.gguf").tensors}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    base_in = read_gguf(t.base_path).tensors["blk.0.attn_output.weight"].shape[-1]
    assert a["blk.0.attn_output.weight.lora_a"].shape == (4, base_in)  # (rank, in) as numpy sees it


def test_bdlora_blocks_that_cannot_split_are_refused(tiny, tmp_path):
    import json

    t = tiny("qwen3")
    make_peft_adapter(t.model, tmp_path / "bd", dict(r=4, lora_alpha=8, target_modules=TARGETS, use_bdlora=BD), seed=3)
    cfg_path = tmp_path / "bd" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["use_bdlora"]["nblocks"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConversionError) as e:
        convert(tmp_path / "bd", arch="qwen3", out=tmp_path / "x.gguf")
    assert "block-diagonal lora_A (4, 64): 4 rows do not split into nblocks=3 blocks" in str(e.value)
    cfg["use_bdlora"] = {"nblocks": "two"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="use_bdlora must hold nblocks"):
        convert(tmp_path / "bd", arch="qwen3", out=tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_kasa_is_refused_by_name(tiny, tmp_path):
    t = tiny("qwen3")
    make_peft_adapter(t.model, tmp_path / "kasa", dict(r=4, lora_alpha=8, target_modules=TARGETS,
                                                       kasa_config=KasaConfig()), seed=3)
    with pytest.raises(ConversionError) as e:
        convert(tmp_path / "kasa", base=t.base_path, out=tmp_path / "x.gguf")
    text = str(e.value)
    assert "KaSA (kasa_config)" in text and "merge_and_unload" in text
    assert "lora_diag: not a LoRA tensor" not in text  # the config's refusal explains the tensors


def test_training_only_tensors_without_their_config_are_a_contradiction(tiny, tmp_path):
    import json

    t = tiny("qwen3")
    make_peft_adapter(t.model, tmp_path / "v", dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                    velora_config=VeloraConfig()), seed=3)
    cfg_path = tmp_path / "v" / "adapter_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "velora_config": None}))
    with pytest.raises(ConversionError, match="adapter_config.json has no velora_config"):
        convert(tmp_path / "v", base=t.base_path, out=tmp_path / "x.gguf")
