"""Every script under examples/ that runs without the real model runs here on tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from adapters import make_peft_adapter

from edge_lora_convert import convert

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def two_adapters(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    t = tiny("qwen3")
    out = {}
    for i, name in enumerate(("a", "b")):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=60 + i)
        out[name] = convert(tmp / name, base=t.base_path, out=tmp / f"{name}.gguf").out_path
    return t, tmp, out


def test_convert_and_run(two_adapters, tmp_path):
    t, tmp, _ = two_adapters
    out = run("convert_and_run.py", tmp / "a", t.base_path, tmp_path / "x.gguf", "hello")
    assert "compatible with the base: True" in out and "ranks [8], 14 target tensors" in out
    assert "base: " in out and "adapter: " in out
    assert (tmp_path / "x.gguf").read_bytes()[:4] == b"GGUF"


def test_multi_adapter_chat(two_adapters):
    t, _, paths = two_adapters
    out = run("multi_adapter_chat.py", t.base_path, *(f"{n}={p}" for n, p in paths.items()))
    lines = out.strip().splitlines()
    assert lines[0].startswith("[a:1]") and lines[1].startswith("[b:1]") and lines[2].startswith("[a:0.5, b:0.5]")
    assert lines[3].startswith("[base]") and lines[4].startswith("[a:1]")
    reused = int(lines[4].rsplit("tokens, ", 1)[1].split(" reused")[0])
    assert reused > 0  # back to adapter a: its snapshot is restored
    assert "10 messages in the session" in out


def test_desktop_embedding(two_adapters):
    t, _, paths = two_adapters
    out = run("desktop_embedding.py", t.base_path, f"a={paths['a']}")
    assert "[done: " in out and "streamed " in out and "the UI loop ticked" in out
