"""Every script under examples/ runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adapters import make_peft_adapter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_convert_peft_adapter_example(tiny, tmp_path):
    t = tiny("qwen3")
    make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules="all-linear"))
    out = tmp_path / "a.gguf"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "convert_peft_adapter.py"), str(tmp_path / "a"), str(t.base_path), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "compatible with the base: True" in proc.stdout
    assert "ranks [8], 14 target tensors" in proc.stdout
    assert out.read_bytes()[:4] == b"GGUF"
