"""What cannot be converted is refused: exit status 2, every problem named, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from adapters import edit_adapter, edit_config, make_mlx_adapter, make_peft_adapter, peft_logits
from tiny_models import TOKENS, llama_logits, rel_err

from edge_lora.cli import main as cli


def run_convert(adapter: Path, base: Path | None, out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "edge_lora.cli", "convert", str(adapter), "-o", str(out), "-q", *extra]
    if base is not None:
        argv += ["--base", str(base)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr}"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")], "a temp file was left behind"
    assert "Traceback" not in proc.stderr


@pytest.fixture
def llama2(tiny):
    return tiny("llama2")


def test_dora_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "DoRA", "lora_magnitude_vector", "model.layers.0.self_attn.q_proj")


def test_modules_to_save_refused(llama2, tmp_path):
    make_peft_adapter(
        llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "modules_to_save", "full weight", "lm_head")


def test_lora_bias_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["v_proj"], lora_bias=True))
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "LoRA bias", "lora_B.bias")


def test_trained_bias_refused(tiny, tmp_path):
    t = tiny("qwen2")  # q/k/v carry biases
    make_peft_adapter(t.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"], bias="all"))
    proc = run_convert(tmp_path / "a", t.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "bias='all'")


@pytest.mark.parametrize("case", ["llama3", "gemma3"])
def test_lm_head_on_tied_base_refused(tiny, case, tmp_path):
    t = tiny(case)
    make_peft_adapter(t.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    proc = run_convert(tmp_path / "a", t.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "lm_head", "tied")


def test_unknown_module_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    edit_adapter(tmp_path / "a", lambda d: {k.replace("q_proj", "foo_proj"): v for k, v in d.items()})
    edit_config(tmp_path / "a", target_modules=["foo_proj"])
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "model.layers.0.self_attn.foo_proj", "did not map to llama tensors")


def test_shape_mismatch_refused(tiny, tmp_path):
    # llama2 is MHA, llama3 is GQA: k_proj/v_proj do not fit, every one is listed
    make_peft_adapter(tiny("llama2").model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["k_proj", "v_proj"]))
    proc = run_convert(tmp_path / "a", tiny("llama3").base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "blk.0.attn_k.weight", "blk.1.attn_v.weight")


def test_a_without_b_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    edit_adapter(tmp_path / "a", lambda d: {k: v for k, v in d.items() if not ("layers.1." in k and "lora_B" in k)})
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "lora_B is missing", "model.layers.1.self_attn.q_proj")


def test_missing_and_malformed_config_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    cfg = tmp_path / "a" / "adapter_config.json"
    cfg.write_text("{not json")
    assert_refused(run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf"), tmp_path / "o.gguf", "malformed JSON")
    cfg.write_text(json.dumps({"peft_type": "LORA", "r": "eight"}))
    assert_refused(
        run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf"), tmp_path / "o.gguf", "'r' must be", "lora_alpha"
    )
    cfg.unlink()
    assert_refused(run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf"), tmp_path / "o.gguf", "missing adapter config")


def test_all_problems_listed_together(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    edit_adapter(tmp_path / "a", lambda d: {k: v for k, v in d.items() if not ("layers.0." in k and "q_proj.lora_B" in k)})
    edit_config(tmp_path / "a", use_dora=True, rank_pattern={"v_proj": 6})
    proc = run_convert(tmp_path / "a", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "DoRA", "lora_B is missing", "differs from the configured rank 6")


def test_mlx_dora_and_wrong_layers_refused(llama2, tmp_path):
    make_mlx_adapter(llama2.model, tmp_path / "m", ["self_attn.q_proj"], rank=4, scale=2.0, num_layers=2)
    cfgp = tmp_path / "m" / "adapter_config.json"
    cfg = json.loads(cfgp.read_text())
    cfg["num_layers"] = 1
    cfg["fine_tune_type"] = "dora"
    cfgp.write_text(json.dumps(cfg))
    proc = run_convert(tmp_path / "m", llama2.base_path, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "fine_tune_type='dora'")


def test_not_a_gguf_base_refused(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    fake = tmp_path / "base.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    proc = run_convert(tmp_path / "a", fake, tmp_path / "o.gguf")
    assert_refused(proc, tmp_path / "o.gguf", "not a GGUF file")


def test_existing_output_kept_without_force(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    out = tmp_path / "o.gguf"
    out.write_bytes(b"user data")
    proc = run_convert(tmp_path / "a", llama2.base_path, out)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert out.read_bytes() == b"user data"
    assert run_convert(tmp_path / "a", llama2.base_path, out, "--force").returncode == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_failed_conversion_keeps_previous_output(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous")
    proc = run_convert(tmp_path / "a", llama2.base_path, out, "--force")
    assert proc.returncode == 2
    assert out.read_bytes() == b"previous"


def test_dry_run_writes_nothing(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    out = tmp_path / "o.gguf"
    assert cli(["convert", str(tmp_path / "a"), "--base", str(llama2.base_path), "-o", str(out), "--dry-run", "-q"]) == 0
    assert not out.exists()


def test_unchecked_arch_conversion(tiny, tmp_path):
    """--arch without --base converts (qwen2 needs no head counts) and says it is unchecked."""
    t = tiny("qwen2")
    ref = make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, target_modules="all-linear"))
    proc = run_convert(tmp_path / "a", None, tmp_path / "o.gguf", "--arch", "qwen2", "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    assert "unchecked" in proc.stderr
    got = llama_logits(t.base_path, TOKENS, lora_path=tmp_path / "o.gguf")
    assert rel_err(got, peft_logits(ref, TOKENS)) <= 1e-3


def test_unchecked_llama_qk_needs_base(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    proc = run_convert(tmp_path / "a", None, tmp_path / "o.gguf", "--arch", "llama")
    assert_refused(proc, tmp_path / "o.gguf", "pass --base", "q_proj")
    assert "v_proj" not in proc.stderr.split("error:", 1)[1]


def test_unsupported_arch_refused(tmp_path, llama2):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    proc = run_convert(tmp_path / "a", None, tmp_path / "o.gguf", "--arch", "falcon")
    assert_refused(proc, tmp_path / "o.gguf", "not supported", "gemma3")


def _run_on_tty(argv: list[str]) -> str:
    """Run with stderr on a pseudo-terminal; return what was written there."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # a terminal of 24x100: a fresh pty is 0x0, where tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(llama2, tmp_path):
    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    base = [sys.executable, "-m", "edge_lora.cli", "convert", str(tmp_path / "a"), "--base", str(llama2.base_path)]
    shown = _run_on_tty(base + ["-o", str(tmp_path / "1.gguf")])
    assert "%|" in shown  # tqdm's bar
    assert "%|" not in _run_on_tty(base + ["-o", str(tmp_path / "2.gguf"), "--quiet"])
    piped = subprocess.run(base + ["-o", str(tmp_path / "3.gguf")], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "%|" not in piped.stderr


def test_output_gets_normal_permissions(llama2, tmp_path):
    """Atomic writes go through a private temp file; the result must still be readable as usual."""
    import os

    make_peft_adapter(llama2.model, tmp_path / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj"]))
    out = tmp_path / "o.gguf"
    assert cli(["convert", str(tmp_path / "a"), "--base", str(llama2.base_path), "-o", str(out), "-q"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
