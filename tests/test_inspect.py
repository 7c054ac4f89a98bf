"""`edge-lora inspect` and the adapter/base compatibility report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from adapters import make_peft_adapter
from gguf import GGUFReader, GGUFValueType, Keys

from edge_lora.cli import main as cli
from edge_lora.lora.compat import adapter_problems
from edge_lora.errors import GGUFFileError
from edge_lora.formats.gguf_file import GGUFInfo, TensorInfo, read_gguf
from edge_lora.inspect import describe


@pytest.fixture
def converted(tiny, tmp_path):
    t = tiny("llama2")
    cfg = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 4})
    make_peft_adapter(t.model, tmp_path / "a", cfg)
    out = tmp_path / "a.gguf"
    assert cli(["convert", str(tmp_path / "a"), "--base", str(t.base_path), "-o", str(out), "-q"]) == 0
    return t, out


def test_adapter_metadata_written(converted):
    _, out = converted
    reader = GGUFReader(out)
    fields = reader.fields
    assert fields[Keys.General.TYPE].contents() == "adapter"
    assert fields[Keys.General.ARCHITECTURE].contents() == "llama"
    assert fields[Keys.Adapter.TYPE].contents() == "lora"
    alpha = fields[Keys.Adapter.LORA_ALPHA]
    assert alpha.types == [GGUFValueType.FLOAT32] and alpha.contents() == 16.0
    assert fields["edge_lora.source_format"].contents() == "peft"
    assert fields["edge_lora.target_modules"].contents() == "q_proj,v_proj"
    assert bool(fields["edge_lora.checked_against_base"].contents())


def test_inspect_adapter_json(converted, capsys):
    t, out = converted
    assert cli(["inspect", str(out), "--base", str(t.base_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "adapter" and report["architecture"] == "llama"
    assert report["alpha"] == 16.0
    assert report["ranks"] == [4, 8]
    assert "blk.0.attn_q.weight" in report["targets"] and report["n_targets"] == 4
    assert report["provenance"]["source_format"] == "peft"
    assert report["size_bytes"] == out.stat().st_size
    assert report["compatibility"] == {"base": str(t.base_path), "compatible": True, "problems": []}


def test_inspect_base(tiny, capsys):
    t = tiny("llama2")
    assert cli(["inspect", str(t.base_path)]) == 0
    text = capsys.readouterr().out
    assert "base (llama)" in text and "layers: 2" in text
    report = describe(t.base_path)
    assert report["quantization"] == "ALL_F32"
    assert report["layers"] == t.model.config.num_hidden_layers
    assert report["has_output_tensor"] is True
    assert report["vocab_size"] == t.model.config.vocab_size
    assert report["has_chat_template"] is False


def test_inspect_reports_every_problem(converted, tiny, capsys):
    _, out = converted
    other = tiny("llama3")  # GQA: every v_proj LoRA (and no q) misfits
    assert cli(["inspect", str(out), "--base", str(other.base_path), "--json"]) == 1
    compat = json.loads(capsys.readouterr().out)["compatibility"]
    assert not compat["compatible"]
    assert [p.split(":")[0] for p in compat["problems"]] == ["blk.0.attn_v.weight", "blk.1.attn_v.weight"]


def test_inspect_other_architecture(converted, tiny, capsys):
    _, out = converted
    assert cli(["inspect", str(out), "--base", str(tiny("qwen3").base_path)]) == 1
    assert "does not match the base's 'qwen3'" in capsys.readouterr().out


def test_inspect_bad_files(tmp_path, converted, capsys):
    t, out = converted
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"hello world")
    assert cli(["inspect", str(junk)]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    assert cli(["inspect", str(truncated)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert cli(["inspect", str(tmp_path / "missing.gguf")]) == 2
    assert "file not found" in capsys.readouterr().err
    # a base given where an adapter is expected
    assert cli(["inspect", str(t.base_path), "--base", str(t.base_path)]) == 1


def test_read_gguf_truncated_header(tmp_path, converted):
    _, out = converted
    head = tmp_path / "head.gguf"
    head.write_bytes(out.read_bytes()[:40])
    with pytest.raises(GGUFFileError, match="head.gguf"):
        read_gguf(head)


def _info(tensors: dict[str, tuple[int, ...]], adapter: bool) -> GGUFInfo:
    md = {Keys.General.ARCHITECTURE: "gemma3"}
    if adapter:
        md |= {Keys.General.TYPE: "adapter", Keys.Adapter.TYPE: "lora", Keys.Adapter.LORA_ALPHA: 8.0}
    return GGUFInfo(Path("x.gguf"), 0, md, {n: TensorInfo(n, s, "F32", 0) for n, s in tensors.items()})


def test_embedding_lora_on_tied_base_is_a_problem():
    """llama.cpp would apply token_embd's LoRA to the tied output and abort: caught in Python."""
    base = _info({"token_embd.weight": (320, 64), "blk.0.attn_q.weight": (64, 64)}, adapter=False)
    adapter = _info({"token_embd.weight.lora_a": (320, 4), "token_embd.weight.lora_b": (64, 4)}, adapter=True)
    problems = adapter_problems(adapter, base, check_data=False)  # a header without a file
    assert len(problems) == 1 and "output shares the token embedding" in problems[0]
    untied = _info({"token_embd.weight": (320, 64), "output.weight": (320, 64)}, adapter=False)
    assert adapter_problems(adapter, untied, check_data=False) == []
