"""Bad files and inputs: a typed error naming the file and the problem; the runtime stays usable."""

from __future__ import annotations

import numpy as np
import pytest
from adapters import make_peft_adapter
from tiny_models import TOKENS

from edge_lora import GGUFFileError, IncompatibleAdapterError, Runtime, UnknownAdapterError
from edge_lora_convert import convert


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt-errors")
    t = tiny("llama2")
    make_peft_adapter(t.model, tmp / "ok", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    convert(tmp / "ok", base=t.base_path, out=tmp / "ok.gguf")
    # an adapter for another architecture (qwen3) and one for other shapes (llama3: GQA)
    q = tiny("qwen3")
    make_peft_adapter(q.model, tmp / "qwen", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    convert(tmp / "qwen", base=q.base_path, out=tmp / "qwen.gguf")
    l3 = tiny("llama3")
    make_peft_adapter(l3.model, tmp / "gqa", dict(r=4, lora_alpha=8, target_modules=["k_proj", "v_proj"]))
    convert(tmp / "gqa", base=l3.base_path, out=tmp / "gqa.gguf")
    rt = Runtime(t.base_path, n_ctx=256)
    rt.load_adapter("ok", tmp / "ok.gguf")
    yield t, tmp, rt
    rt.close()


def _still_usable(rt: Runtime, before: np.ndarray) -> None:
    assert np.array_equal(rt.logits(TOKENS, {"ok": 1.0}), before)
    assert list(rt.adapters) == ["ok"]


def test_bad_adapter_files(setup, tmp_path):
    t, tmp, rt = setup
    before = rt.logits(TOKENS, {"ok": 1.0})
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00" * 100)
    truncated = tmp_path / "trunc.gguf"
    data = (tmp / "ok.gguf").read_bytes()
    truncated.write_bytes(data[: len(data) - 100])
    cases = [
        (junk, GGUFFileError, "not a GGUF file"),
        (tmp_path / "missing.gguf", GGUFFileError, "file not found"),
        (truncated, GGUFFileError, "truncated"),
        (t.base_path, GGUFFileError, "not 'adapter'"),  # the wrong kind of GGUF file
        (tmp / "qwen.gguf", IncompatibleAdapterError, "architecture 'qwen3' does not match"),
        (tmp / "gqa.gguf", IncompatibleAdapterError, "blk.0.attn_k.weight"),
    ]
    for path, err, needle in cases:
        with pytest.raises(err, match=needle) as info:
            rt.load_adapter("bad", path)
        assert str(path.name) in str(info.value)
        assert "bad" not in rt.adapters
        _still_usable(rt, before)


def test_every_shape_problem_listed(setup):
    _, tmp, rt = setup
    with pytest.raises(IncompatibleAdapterError) as info:
        rt.load_adapter("bad", tmp / "gqa.gguf")
    names = {p.split(":")[0] for p in info.value.problems}
    assert names == {f"blk.{i}.attn_{w}.weight" for i in (0, 1) for w in ("k", "v")}


def test_bad_base_files(setup, tmp_path):
    _, tmp, _ = setup
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model")
    with pytest.raises(GGUFFileError, match="junk.gguf: not a GGUF file"):
        Runtime(junk)
    with pytest.raises(GGUFFileError, match="is a LoRA adapter, not a base model"):
        Runtime(tmp / "ok.gguf")
    with pytest.raises(GGUFFileError, match="file not found"):
        Runtime(tmp_path / "nope.gguf")


def test_unknown_adapter_lists_loaded(setup):
    _, _, rt = setup
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'; loaded adapters: ok"):
        rt.complete("x", {"nope": 1.0})
    with pytest.raises(UnknownAdapterError):
        rt.unload_adapter("nope")
    with pytest.raises(UnknownAdapterError):
        rt.stream("x", {"nope": 1.0})  # raised at the call, not at the first piece


def test_gpu_layers_without_a_gpu_device_is_an_error_not_a_silent_cpu_run(setup):
    """On an engine that lists no GPU-type device (this CPU build, or a Vulkan one whose only device
    is a software one llama.cpp skipped), asking for offload is refused, with the reason."""
    from edge_lora import InvalidRequestError
    from edge_lora.engine.native import devices
    from edge_lora.engine.offload import offload_devices

    t, _, rt = setup
    if offload_devices(devices()):
        pytest.skip("this engine has a GPU device: offload is what happens (tests/test_offload.py)")
    for layers in (-1, 4):
        with pytest.raises(InvalidRequestError) as e:
            Runtime(t.base_path, n_ctx=64, n_gpu_layers=layers)
        assert e.value.param == "n_gpu_layers" and "sees no GPU device" in str(e.value)
    with pytest.raises(InvalidRequestError, match="n_gpu_layers must be an integer"):
        Runtime(t.base_path, n_ctx=64, n_gpu_layers=-2)


def test_op_offload_off_is_accepted_and_changes_nothing_on_the_cpu(setup):
    t, _, rt = setup
    with Runtime(t.base_path, n_ctx=256, op_offload=False) as off:
        off.load_adapter("ok", setup[1] / "ok.gguf")
        ids = list(range(3, 80))  # a batch over op offload's 32 tokens
        np.testing.assert_array_equal(off.logits(ids, {"ok": 1.0}), rt.logits(ids, {"ok": 1.0}))
