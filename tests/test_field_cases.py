"""Checkpoints as people really save them (issue: hardening from field reports).

``../shared/field_cases`` holds real-world examples with their right behaviour (README
there); each kind is also tested here with inputs of our own, on the tiny models.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from adapters import edit_adapter, edit_config, make_mlx_adapter, make_peft_adapter, peft_logits
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import TOKENS, llama_logits, rel_err

from edge_lora.errors import CheckpointError, ConversionError
from edge_lora.formats.keys import EdgeLoraKeys
from edge_lora_convert import convert

FIELD = Path(__file__).resolve().parents[2] / "shared" / "field_cases"
needs_field = pytest.mark.skipif(not FIELD.is_dir(), reason="../shared/field_cases not present")
TOL = 1e-3


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = tensors_of(a), tensors_of(b)
    return sorted(ta) == sorted(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)


def refused(fn, *needles: str, err=ConversionError) -> str:
    with pytest.raises(err) as info:
        fn()
    text = str(info.value)
    for n in needles:
        assert n in text, f"{n!r} not in:\n{text}"
    return text


# --- the shared field cases -----------------------------------------------------------------


@needs_field
@pytest.mark.parametrize("case", ["doubled-prefix", "language-model-nested", "fan-in-fan-out-linear", "weights-other-name"])
def test_field_case_converts_like_plain(case, tmp_path):
    base = FIELD / "base-llama2-tiny-f32.gguf"
    convert(FIELD / "cases" / "plain", base=base, out=tmp_path / "plain.gguf")
    r = convert(FIELD / "cases" / case, base=base, out=tmp_path / "case.gguf")
    assert same_tensors(tmp_path / "plain.gguf", tmp_path / "case.gguf")
    if case == "fan-in-fan-out-linear":
        assert any("fan_in_fan_out=true ignored" in n for n in r.notes)
    if case == "weights-other-name":
        assert any("frame.safetensors" in n for n in r.notes)
        convert(FIELD / "cases" / case / "frame.safetensors", base=base, out=tmp_path / "by-path.gguf")
        assert same_tensors(tmp_path / "plain.gguf", tmp_path / "by-path.gguf")


@needs_field
@pytest.mark.parametrize("case, needles", [
    ("mixed-adapter-names", ["several PEFT adapters", "'default'", "'other'", "--adapter-name"]),
    ("foreign-module-tree", ["4 of 4 modules did not map to llama tensors (0 did)", "transformer.h.0.attn.q_proj"]),
    ("pissa", ["init_lora_weights='pissa'", "path_initial_model_for_weight_conversion"]),
    ("alpha-nan", ["'lora_alpha' must be a finite number, found nan"]),
    ("vocab-resized", ["resized from 320 to 328 tokens", "a base with those 328 tokens"]),
])
def test_field_case_is_refused_with_the_reason(case, needles, tmp_path):
    base = FIELD / "base-llama2-tiny-f32.gguf"
    refused(lambda: convert(FIELD / "cases" / case, base=base, out=tmp_path / "o.gguf"), *needles)
    assert not (tmp_path / "o.gguf").exists()


@needs_field
def test_field_nan_factors_refused_by_runtime_inspect_and_cli(tmp_path):
    from edge_lora import IncompatibleAdapterError, Runtime
    from edge_lora.cli import main as cli
    from edge_lora.inspect import describe

    base, bad = FIELD / "base-llama2-tiny-f32.gguf", FIELD / "nan-factors.gguf"
    report = describe(bad, base=base)
    assert not report["compatibility"]["compatible"]
    assert any("blk.0.attn_q.weight.lora_b" in p for p in report["compatibility"]["problems"])
    with Runtime(base, n_ctx=64) as rt:
        refused(lambda: rt.load_adapter("x", bad), "blk.0.attn_q.weight.lora_b: 256 of 256 values are NaN",
                err=IncompatibleAdapterError)
        assert rt.adapters == {}
    assert cli(["inspect", str(bad), "--base", str(base)]) == 1
    assert cli(["run", str(base), "--adapter", f"x={bad}", "-p", "hi", "--max-tokens", "2"]) == 2


def _retyped(src: Path, dst: Path, key: str, vtype: gguf.GGUFValueType, value,
             sub_type: gguf.GGUFValueType = gguf.GGUFValueType.UINT32) -> Path:
    """``src`` rewritten with ``key`` stored as ``vtype`` (arrays of ``sub_type``), as third-party writers do."""
    reader = gguf.GGUFReader(src)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    w = gguf.GGUFWriter(str(dst), arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
            continue
        if name == key:
            continue
        w.add_key_value(name, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    w.add_key_value(key, value, vtype, sub_type=sub_type if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@needs_field
def test_typed_keys_llama_cpp_would_abort_on_are_refused(tmp_path):
    """llama.cpp reads adapter.lora.alpha with a typed getter that aborts the process on another
    type: the field file (UINT32) and our own (FLOAT64 alpha, UINT32 adapter.type) are typed refusals."""
    from edge_lora import IncompatibleAdapterError, Runtime
    from edge_lora.inspect import describe

    base = FIELD / "base-llama2-tiny-f32.gguf"
    plain = tmp_path / "plain.gguf"
    convert(FIELD / "cases" / "plain", base=base, out=plain, outtype="f32")
    cases = {FIELD / "turn3" / "alpha-u32.gguf": ("adapter.lora.alpha", "UINT32"),
             _retyped(plain, tmp_path / "f64.gguf", gguf.Keys.Adapter.LORA_ALPHA, gguf.GGUFValueType.FLOAT64, 8.0):
                 ("adapter.lora.alpha", "FLOAT64"),
             _retyped(plain, tmp_path / "typ.gguf", gguf.Keys.Adapter.TYPE, gguf.GGUFValueType.UINT32, 1):
                 ("adapter.type", "UINT32")}
    with Runtime(base, n_ctx=64) as rt:
        for path, (key, stored) in cases.items():
            refused(lambda: rt.load_adapter("x", path), f"{key} is stored as {stored}", "FLOAT32" if "alpha" in key
                    else "STRING", err=IncompatibleAdapterError)
            assert not describe(path, base=base)["compatibility"]["compatible"]
        rt.load_adapter("ok", plain)  # still usable
        assert list(rt.adapters) == ["ok"]
        # aLoRA invocation tokens: llama.cpp's loader throws on any element type but UINT32
        key, array = gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS, gguf.GGUFValueType.ARRAY
        for sub, stored in ((gguf.GGUFValueType.INT32, "an array of INT32"), (gguf.GGUFValueType.UINT64, "an array of UINT64")):
            bad = _retyped(plain, tmp_path / f"alora-{stored[-6:]}.gguf", key, array, [37, 251], sub)
            refused(lambda: rt.load_adapter("a", bad), f"{key} is stored as {stored}", "array of UINT32",
                    err=IncompatibleAdapterError)
        far = _retyped(plain, tmp_path / "alora-far.gguf", key, array, [37, 99999])
        refused(lambda: rt.load_adapter("a", far), "id 99999 is beyond the base's", err=IncompatibleAdapterError)
        rt.load_adapter("a", _retyped(plain, tmp_path / "alora.gguf", key, array, [37, 251]))
        assert rt.adapters["a"].invocation_tokens == (37, 251)


TURN3 = FIELD / "turn3" / "cases"


@needs_field
@pytest.mark.parametrize("case,reference", [("orig-mod-prefix", FIELD / "cases" / "plain"),
                                            ("unsloth-mlx-config", TURN3 / "mlx-reference"),
                                            ("composite-target-paths", TURN3 / "composite-reference")])
def test_trainer_saves_convert_like_their_reference(case, reference, tmp_path):
    base = FIELD / "base-llama2-tiny-f32.gguf"
    convert(reference, base=base, out=tmp_path / "ref.gguf")
    convert(TURN3 / case, base=base, out=tmp_path / "case.gguf")
    assert same_tensors(tmp_path / "ref.gguf", tmp_path / "case.gguf")


@pytest.mark.parametrize("config", [
    # LLaMA-Factory: full paths of the composite model, an alpha_pattern by full path
    dict(target_modules=[f"model.language_model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")],
         alpha_pattern={"model.language_model.layers.0.self_attn.q_proj": 32}),
    # ms-swift: an anchored regex on the same paths, a rank_pattern by full path
    dict(target_modules=r"^(model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj))$",
         rank_pattern={"model.language_model.layers.1.self_attn.v_proj": 2}),
], ids=["llama-factory", "ms-swift"])
def test_config_matched_against_the_path_peft_saw(plain, config, tmp_path):
    """A composite model's save (keys under model.language_model.) whose config names those paths: the
    patterns apply as PEFT applied them (not silently ignored), the reference being the same factors
    saved the ordinary way with the same per-module rank and alpha."""
    t, src, _ = plain
    base = dict(r=4, lora_alpha=8)
    tensors = {k: v for k, v in load_file(src / "adapter_model.safetensors").items() if ".mlp." not in k}
    if "rank_pattern" in config:  # layer 1's v_proj at rank 2: its factors cut to rank 2
        for side, axis in (("lora_A", 0), ("lora_B", 1)):
            key = f"base_model.model.model.layers.1.self_attn.v_proj.{side}.weight"
            tensors[key] = tensors[key].narrow(axis, 0, 2).contiguous()
    ordinary = {k: v for k, v in config.items() if k != "target_modules"}
    ordinary = {k: {p.replace("model.language_model.", "model."): x for p, x in v.items()} for k, v in ordinary.items()}
    for folder, cfg, keys in ((tmp_path / "ref", {**base, "target_modules": ["q_proj", "v_proj"], **ordinary}, tensors),
                              (tmp_path / "comp", {**base, **config},
                               {k.replace("base_model.model.model.", "base_model.model.model.language_model."): v
                                for k, v in tensors.items()})):
        folder.mkdir()
        save_file(keys, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        full = json.loads((src / "adapter_config.json").read_text())
        full.update(cfg)
        (folder / "adapter_config.json").write_text(json.dumps(full))
        convert(folder, base=t.base_path, out=folder.with_suffix(".gguf"))
    assert same_tensors(tmp_path / "ref.gguf", tmp_path / "comp.gguf")


def test_tinkers_head_name_is_the_output_head(tiny, tmp_path):
    """Tinker names the head model.unembed_tokens: on an untied base exactly output.weight's LoRA; on
    a tied one refused for the tied head, the right reason."""
    t = tiny("llama2")
    make_peft_adapter(t.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    convert(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf")
    _rekey(tmp_path / "a", tmp_path / "tinker", lambda k: k.replace("base_model.model.lm_head.", "base_model.model.model.unembed_tokens."))
    edit_config(tmp_path / "tinker", target_modules=["q_proj", "unembed_tokens"])
    r = convert(tmp_path / "tinker", base=t.base_path, out=tmp_path / "tinker.gguf")
    assert same_tensors(tmp_path / "a.gguf", tmp_path / "tinker.gguf")
    assert any("as Tinker names it" in n for n in r.notes)
    tied = tiny("llama3")
    make_peft_adapter(tied.model, tmp_path / "b", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    edit_adapter(tmp_path / "b", lambda d: {**d, "base_model.model.model.unembed_tokens.lora_A.weight": torch.zeros(4, 64),
                                            "base_model.model.model.unembed_tokens.lora_B.weight": torch.zeros(320, 4)})
    edit_config(tmp_path / "b", target_modules=["q_proj", "unembed_tokens"])
    refused(lambda: convert(tmp_path / "b", base=tied.base_path, out=tmp_path / "b.gguf"), "lm_head LoRA on a base whose output",
            "tied")


def test_peft_alora_converts_with_the_invocation_tokens_llama_cpp_reads(tiny, tmp_path):
    """PEFT's aLoRA (alora_invocation_tokens): the factors as a plain LoRA's, the invocation tokens as
    adapter.alora.invocation_tokens (UINT32, which llama.cpp's loader requires and reads back); it
    exports back to a PEFT aLoRA; merge and combine refuse it (it would act on every token).
    (The runtime's aLoRA against PEFT: test_alora.py.)"""
    import llama_cpp

    from edge_lora import IncompatibleAdapterError, Runtime
    from edge_lora.merge import merge
    from edge_lora_convert import combine
    from edge_lora_convert.export_peft import export_peft

    t = tiny("llama2")
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    make_peft_adapter(t.model, tmp_path / "plain", cfg, seed=2)
    make_peft_adapter(t.model, tmp_path / "alora", {**cfg, "alora_invocation_tokens": [37, 251]}, seed=2)
    convert(tmp_path / "plain", base=t.base_path, out=tmp_path / "plain.gguf")
    r = convert(tmp_path / "alora", base=t.base_path, out=tmp_path / "alora.gguf")
    assert same_tensors(tmp_path / "plain.gguf", tmp_path / "alora.gguf")
    assert any("activated LoRA" in n for n in r.notes)
    field = gguf.GGUFReader(tmp_path / "alora.gguf").fields[gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS]
    assert field.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32] and list(field.contents()) == [37, 251]
    # llama.cpp's loader throws on invocation tokens of another element type: stock llama.cpp loads it
    llm = llama_cpp.Llama(model_path=str(t.base_path), lora_path=str(tmp_path / "alora.gguf"), n_ctx=32, verbose=False)
    llm.close()
    from edge_lora.inspect import describe

    assert describe(tmp_path / "alora.gguf")["alora_invocation_tokens"] == [37, 251]
    assert describe(tmp_path / "plain.gguf")["alora_invocation_tokens"] is None
    with Runtime(t.base_path, n_ctx=64) as rt:
        assert rt.load_adapter("a", tmp_path / "alora.gguf").invocation_tokens == (37, 251)
    export_peft(tmp_path / "alora.gguf", tmp_path / "back", base=t.base_path)
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["alora_invocation_tokens"] == [37, 251]
    convert(tmp_path / "back", base=t.base_path, out=tmp_path / "again.gguf")
    assert same_tensors(tmp_path / "alora.gguf", tmp_path / "again.gguf")
    assert describe(tmp_path / "again.gguf")["alora_invocation_tokens"] == [37, 251]
    refused(lambda: merge(t.base_path, [(tmp_path / "alora.gguf", 1.0)], tmp_path / "m.gguf"),
            "activated LoRA (aLoRA, invocation tokens [37, 251])", "merged into the base it would apply it to every token",
            err=IncompatibleAdapterError)
    refused(lambda: combine([(tmp_path / "alora.gguf", 1.0), (tmp_path / "plain.gguf", 1.0)], tmp_path / "c.gguf"),
            "combined with others it would apply it to every token", err=IncompatibleAdapterError)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "c.gguf").exists()
    make_peft_adapter(t.model, tmp_path / "far", {**cfg, "alora_invocation_tokens": [37, 9999]}, seed=2)
    refused(lambda: convert(tmp_path / "far", base=t.base_path, out=tmp_path / "far.gguf"), "id 9999 is beyond")


@needs_field
def test_an_ungathered_zero3_save_is_named(tmp_path):
    refused(lambda: convert(TURN3 / "zero3-empty", base=FIELD / "base-llama2-tiny-f32.gguf", out=tmp_path / "z.gguf"),
            "8 of 8 tensors have 0 elements", "ZeRO-3", "stage3_gather_16bit_weights_on_model_save")


# --- key names: prefixes, adapter names, multimodal wrappers, families ----------------------


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory):
    """A plain PEFT adapter on tiny llama2 (q, v, up) and its conversion, the reference."""
    t = tiny("llama2")
    d = tmp_path_factory.mktemp("plain")
    make_peft_adapter(t.model, d / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    convert(d / "a", base=t.base_path, out=d / "a.gguf")
    return t, d / "a", d / "a.gguf"


def _rekey(src: Path, dst: Path, fn) -> Path:
    shutil.copytree(src, dst)
    edit_adapter(dst, lambda d: {fn(k): v for k, v in d.items()})
    return dst


@pytest.mark.parametrize("rename", [
    lambda k: "base_model.model." * 2 + k.removeprefix("base_model.model."),
    lambda k: "base_model.model." * 3 + k.removeprefix("base_model.model."),
    lambda k: k.removeprefix("base_model.model."),  # a raw state dict of the inner model
    lambda k: k.replace(".weight", ".default.weight"),  # the adapter-name segment, one name
    lambda k: "_orig_mod." + k,  # torch.compile
    lambda k: "module." + k,  # DDP
    lambda k: k.replace(".self_attn.", "._checkpoint_wrapped_module.self_attn.").replace(
        ".mlp.", "._fsdp_wrapped_module.mlp."),  # FSDP and activation checkpointing
    lambda k: k.replace("base_model.model.model.", "base_model.model.model.language_model."),
    lambda k: k.replace("base_model.model.model.", "base_model.model.language_model.model."),
], ids=["prefix-x2", "prefix-x3", "no-prefix", "adapter-name", "orig-mod", "ddp-module", "fsdp-checkpoint",
        "model.language_model", "language_model.model"])
def test_key_layouts_convert_like_plain(plain, rename, tmp_path):
    t, src, ref = plain
    assert np.abs(tensors_of(ref)["blk.0.attn_q.weight.lora_b"]).max() > 0  # real data is compared
    a = _rekey(src, tmp_path / "a", rename)
    convert(a, base=t.base_path, out=tmp_path / "o.gguf")
    assert same_tensors(ref, tmp_path / "o.gguf")


def test_several_adapter_names_refused_or_picked(plain, tmp_path):
    t, src, ref = plain
    a = _rekey(src, tmp_path / "a", lambda k: k.replace(".weight", ".sql.weight"))
    tensors = load_file(a / "adapter_model.safetensors")
    extra = {k.replace(".sql.", ".tone."): v * 2 for k, v in tensors.items()}
    save_file({**tensors, **extra}, a / "adapter_model.safetensors")
    text = refused(lambda: convert(a, base=t.base_path, out=tmp_path / "o.gguf"), "'sql' (12 tensors)", "'tone' (12 tensors)")
    assert "--adapter-name" in text
    r = convert(a, base=t.base_path, out=tmp_path / "sql.gguf", adapter_name="sql")
    assert same_tensors(ref, tmp_path / "sql.gguf") and any("'sql'" in n for n in r.notes)
    refused(lambda: convert(a, base=t.base_path, out=tmp_path / "x.gguf", adapter_name="nope"), "'sql', 'tone'",
            err=CheckpointError)


def test_vision_tower_refused_unless_text_only(plain, tmp_path):
    t, src, ref = plain
    a = _rekey(src, tmp_path / "a", lambda k: k.replace("base_model.model.model.", "base_model.model.model.language_model."))
    tensors = load_file(a / "adapter_model.safetensors")
    tower = {"base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 32),
             "base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 4),
             "base_model.model.model.multi_modal_projector.mm_input_projection.lora_A.weight": torch.ones(4, 32),
             "base_model.model.model.multi_modal_projector.mm_input_projection.lora_B.weight": torch.ones(64, 4)}
    save_file({**tensors, **tower}, a / "adapter_model.safetensors")
    refused(lambda: convert(a, base=t.base_path, out=tmp_path / "o.gguf"), "model.vision_tower (2 tensors)",
            "model.multi_modal_projector (2 tensors)", "--text-only")
    r = convert(a, base=t.base_path, out=tmp_path / "o.gguf", text_only=True)
    assert same_tensors(ref, tmp_path / "o.gguf")
    assert any("--text-only" in n for n in r.notes)
    meta = gguf.GGUFReader(tmp_path / "o.gguf").fields[EdgeLoraKeys.TEXT_ONLY]
    assert bool(meta.parts[meta.data[0]][0])


@pytest.mark.parametrize("tree", [
    lambda k: k.replace("model.layers.", "transformer.h.").replace("self_attn.", "attn.").replace("mlp.", "mlp."),  # GPT-J
    lambda k: k.replace("model.layers.", "model.decoder.layers."),  # OPT
    lambda k: k.replace("model.layers.", "gpt_neox.layers.").replace("self_attn.", "attention."),  # GPT-NeoX
], ids=["gptj", "opt", "neox"])
def test_foreign_module_trees_refused_with_counts(plain, tree, tmp_path):
    t, src, _ = plain
    a = _rekey(src, tmp_path / "a", tree)
    text = refused(lambda: convert(a, base=t.base_path, out=tmp_path / "o.gguf"), "6 of 6 modules did not map to llama tensors (0 did)")
    assert "model.layers.N.self_attn.q_proj" in text


def test_partly_foreign_tree_names_what_did_not_map(plain, tmp_path):
    t, src, _ = plain
    a = _rekey(src, tmp_path / "a", lambda k: k.replace("layers.1.self_attn", "layers.1.cross_attn_x"))
    refused(lambda: convert(a, base=t.base_path, out=tmp_path / "o.gguf"),
            "2 of 6 modules did not map", "(4 did)", "model.layers.1.cross_attn_x.q_proj")


# --- initialisations that change the base: real PEFT saves ----------------------------------


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_base_changing_init_refused_and_peft_conversion_is_exact(tiny, init, tmp_path):
    """A real PEFT save after PiSSA/OLoRA init is refused; PEFT's own conversion to a plain LoRA
    (path_initial_model_for_weight_conversion) converts and matches the trained PEFT model, whose
    base PEFT modified, on the original base."""
    t = tiny("llama2")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init, lora_dropout=0.0)
    model = get_peft_model(copy.deepcopy(t.fresh_model()), cfg)
    model.peft_config["default"].init_lora_weights = True  # PEFT's recipe for the initial save
    model.save_pretrained(tmp_path / "init")
    model.peft_config["default"].init_lora_weights = init
    with torch.no_grad():  # "training": move the factors
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / "trained")
    refused(lambda: convert(tmp_path / "trained", base=t.base_path, out=tmp_path / "o.gguf"),
            f"init_lora_weights={init!r}", "path_initial_model_for_weight_conversion")
    model.save_pretrained(tmp_path / "plain", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    convert(tmp_path / "plain", base=t.base_path, out=tmp_path / "plain.gguf", outtype="f32")
    err = rel_err(llama_logits(t.base_path, TOKENS, tmp_path / "plain.gguf"), peft_logits(model, TOKENS))
    assert err < TOL, err


@pytest.mark.parametrize("init", ["corda", "loftq", "lora_ga", "pissa_niter_16", "some_future_init"])
def test_other_base_changing_or_unknown_inits_refused(plain, init, tmp_path):
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")
    edit_config(tmp_path / "a", init_lora_weights=init)
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf"), f"init_lora_weights={init!r}")


@pytest.mark.parametrize("init", [True, False, "gaussian", "orthogonal"])
def test_plain_inits_convert_exactly(tiny, init, tmp_path):
    t = tiny("llama2")
    model = make_peft_adapter(t.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"],
                                                            init_lora_weights=init))
    convert(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf", outtype="f32")
    assert rel_err(llama_logits(t.base_path, TOKENS, tmp_path / "a.gguf"), peft_logits(model, TOKENS)) < TOL


def test_eva_and_mica_configs_convert(plain, tmp_path):
    t, src, ref = plain
    for init in ("eva", "mica"):
        shutil.copytree(src, tmp_path / init)
        edit_config(tmp_path / init, init_lora_weights=init)
        convert(tmp_path / init, base=t.base_path, out=tmp_path / f"{init}.gguf")
        assert same_tensors(ref, tmp_path / f"{init}.gguf")


# --- nothing non-finite ----------------------------------------------------------------------


@pytest.mark.parametrize("changes, needle", [
    (dict(lora_alpha=float("inf")), "'lora_alpha' must be a finite number, found inf"),
    (dict(lora_alpha="8"), "'lora_alpha' must be a finite number, found '8'"),
    (dict(lora_alpha=True), "'lora_alpha' must be a finite number, found True"),
    (dict(alpha_pattern={"q_proj": float("nan")}), "alpha_pattern['q_proj'] must be a finite number"),
    (dict(rank_pattern={"q_proj": 0}), "rank_pattern['q_proj'] must be a positive integer"),
])
def test_non_finite_config_values_refused(plain, changes, needle, tmp_path):
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")
    edit_config(tmp_path / "a", **changes)
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf"), needle)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensor_values_refused(plain, bad, tmp_path):
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")

    def poison(d):
        k = next(k for k in sorted(d) if "lora_B" in k)
        d[k][0, 0] = bad
        return d

    edit_adapter(tmp_path / "a", poison)
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf"),
            "lora_B.weight: 1 of ", "values are NaN or infinite")


def test_non_finite_mlx_scale_refused(tiny, tmp_path):
    t = tiny("llama2")
    make_mlx_adapter(t.model, tmp_path / "m", ["self_attn.q_proj"], rank=4, scale=2.0, num_layers=2)
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] = math.nan
    (tmp_path / "m" / "adapter_config.json").write_text(json.dumps(cfg))
    refused(lambda: convert(tmp_path / "m", base=t.base_path, out=tmp_path / "o.gguf"), "lora_parameters.scale must be a finite number")


# --- config and paths as users have them ----------------------------------------------------


def test_weights_by_path_config_by_path_and_not_found(plain, tmp_path):
    t, src, ref = plain
    convert(src / "adapter_model.safetensors", base=t.base_path, out=tmp_path / "w.gguf")
    convert(src / "adapter_config.json", base=t.base_path, out=tmp_path / "c.gguf")
    assert same_tensors(ref, tmp_path / "w.gguf") and same_tensors(ref, tmp_path / "c.gguf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    text = refused(lambda: convert(tmp_path / "empty", base=t.base_path, out=tmp_path / "o.gguf"), "no adapter weights found",
                   err=CheckpointError)
    assert "adapter_model.safetensors" in text and "adapter_model.bin" in text and "*.safetensors" in text
    (tmp_path / "noconf").mkdir()
    refused(lambda: convert(tmp_path / "noconf", base=t.base_path, out=tmp_path / "o.gguf"),
            "searched " + str(tmp_path / "noconf" / "adapter_config.json"), err=CheckpointError)


def test_several_weights_files(plain, tmp_path):
    t, src, ref = plain
    shutil.copytree(src, tmp_path / "a")
    shutil.copy(src / "adapter_model.safetensors", tmp_path / "a" / "checkpoint-100.safetensors")
    shutil.copy(src / "adapter_model.safetensors", tmp_path / "a" / "adapters.safetensors")  # a stray MLX-named file
    r = convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf")
    assert same_tensors(ref, tmp_path / "o.gguf")  # read as PEFT (the config says so), PEFT's file
    assert any("also in the folder: adapters.safetensors, checkpoint-100.safetensors" in n for n in r.notes)
    (tmp_path / "a" / "adapter_model.safetensors").unlink()
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o2.gguf"),
            "several weights files", "adapters.safetensors, checkpoint-100.safetensors", err=CheckpointError)


def test_format_comes_from_the_config_then_the_weights_file(plain, tmp_path):
    """A config with both formats' fields (Unsloth's MLX saves): the one weights file decides; with
    both files (or neither) it cannot be told."""
    t, src, ref = plain
    shutil.copytree(src, tmp_path / "a")
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["lora_parameters"] = {"rank": 4, "scale": 2.0}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf")  # adapter_model.safetensors alone: PEFT
    assert same_tensors(ref, tmp_path / "o.gguf")
    shutil.copy(src / "adapter_model.safetensors", tmp_path / "a" / "adapters.safetensors")
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o2.gguf"), "cannot tell PEFT from MLX-LM",
            err=CheckpointError)


def test_notes_for_large_rank_and_another_base_model(tiny, tmp_path):
    t = tiny("llama2")
    make_peft_adapter(t.model, tmp_path / "a", dict(r=80, lora_alpha=8, target_modules=["q_proj"]))
    edit_config(tmp_path / "a", base_model_name_or_path="Qwen/Qwen2-0.5B")
    r = convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf")
    assert any("rank 80 exceeds min(in, out) = 64" in n for n in r.notes)
    assert any("'Qwen/Qwen2-0.5B', which looks like qwen2, not llama" in n for n in r.notes)


def test_stray_rope_buffer_is_named(plain, tmp_path):
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")
    edit_adapter(tmp_path / "a", lambda d: {**d, "base_model.model.model.rotary_emb.inv_freq": torch.ones(8)})
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf"), "a generated buffer (rotary embedding")


@pytest.mark.parametrize("rename", [
    lambda k: k.replace("base_model.model.model.", "base_model.model."),  # a bare decoder (AutoModel / LlamaModel)
    lambda k: k.replace("base_model.model.model.", "base_model.model.language_model.").replace(
        "base_model.model.lm_head", "base_model.model.language_model.lm_head"),  # older multimodal layout
], ids=["bare-decoder", "language_model-lm_head"])
def test_more_layouts_convert_like_plain(tiny, rename, tmp_path):
    t = tiny("llama2")
    make_peft_adapter(t.model, tmp_path / "ref", dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    convert(tmp_path / "ref", base=t.base_path, out=tmp_path / "ref.gguf")
    a = _rekey(tmp_path / "ref", tmp_path / "a", rename)
    convert(a, base=t.base_path, out=tmp_path / "o.gguf")
    assert same_tensors(tmp_path / "ref.gguf", tmp_path / "o.gguf")


@pytest.mark.parametrize("changes, needle", [
    (dict(target_modules=5), "'target_modules' must be a list of names or a valid regular expression"),
    (dict(target_modules="(q_proj"), "'target_modules' must be a list of names or a valid regular expression"),
    (dict(exclude_modules=5), "'exclude_modules' must be"),
    (dict(layers_to_transform="abc"), "'layers_to_transform' must be an integer"),
    (dict(layers_pattern=5), "'layers_pattern' must be"),
    (dict(rank_pattern={"(q": 8}), "rank_pattern key '(q' is not a valid regular expression"),
    (dict(lora_alpha=10**400), "'lora_alpha' must be a finite number"),
])
def test_odd_config_types_are_refused_not_crashes(plain, changes, needle, tmp_path):
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")
    edit_config(tmp_path / "a", **changes)
    refused(lambda: convert(tmp_path / "a", base=t.base_path, out=tmp_path / "o.gguf"), needle)


@pytest.mark.parametrize("name,noted", [("unsloth/llama-3-8b-bnb-4bit", True), ("unsloth/Qwen3-4B-unsloth-bnb-4bit", True),
                                        ("someone/mistral-7b-nf4", True), ("meta-llama/Llama-3.2-1B", False),
                                        ("unsloth/Llama-3.2-1B-Instruct", False)])
def test_a_bitsandbytes_4bit_base_is_noted(plain, tmp_path, name, noted):
    """A QLoRA adapter trained on a bitsandbytes 4-bit base converts, with a note that it was trained
    against NF4-rounded weights (the GGUF base rounds the originals differently)."""
    t, src, _ = plain
    shutil.copytree(src, tmp_path / "a")
    edit_config(tmp_path / "a", base_model_name_or_path=name)
    res = convert(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf")
    assert any("bitsandbytes 4-bit base" in n for n in res.notes) == noted, res.notes
