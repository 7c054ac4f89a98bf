"""Drives examples/desktop_app as a user would, on a real X display (Xvfb), and reports JSON.

    python tests/desktop_driver.py BASE.gguf ADAPTER_DIR OUT_DIR

Run by tests/test_desktop_app.py in a child process with DISPLAY set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "desktop_app"))

from PySide6.QtCore import QEventLoop, Qt, QTimer  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from window import ChatWindow  # noqa: E402

JSON_PROMPT = "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon."
LONG_PROMPT = "Write a very long story about a dragon who learns to cook, with many chapters."


class GapMeter:
    """A 10 ms timer on the UI thread; the largest interval between its ticks is the longest
    time the UI thread was blocked (measured only while ``active``)."""

    def __init__(self) -> None:
        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(self.tick)
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.active = False
        self.timer.start()

    def start(self) -> None:
        self.last = time.perf_counter()
        self.active = True

    def tick(self) -> None:
        now = time.perf_counter()
        if self.active:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now


def wait(signal, timeout_s: float):
    """Run the event loop until ``signal`` fires (returns its argument) or time runs out."""
    loop, box = QEventLoop(), []
    signal.connect(lambda *a: (box.append(a[0] if a else None), loop.quit()))
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    if not box:
        raise TimeoutError(f"no {signal} within {timeout_s} s")
    return box[0]


def last_answer(win: ChatWindow) -> str:
    """The text the window shows for the last answer (after its 'Assistant (...): ' header)."""
    text = win.view.toPlainText()
    return text.rsplit("): ", 1)[1].removesuffix("\n(stopped)") if "Assistant (" in text else ""


def main(base: str, adapter_dir: str, out_dir: str) -> None:
    app = QApplication(sys.argv[:1])
    win = ChatWindow(Path(adapter_dir), n_ctx=2048, max_tokens=64)
    win.show()
    gaps = GapMeter()
    win.load_base(base)
    wait(win.base_loaded, 120)
    report: dict = {"adapters": [win.adapters.cellWidget(r, 0).text() for r in range(win.adapters.rowCount())]}
    checks = []

    def turn(prompt: str, adapters: dict[str, float]) -> None:
        for name in report["adapters"]:
            win.set_adapter(name, name in adapters, adapters.get(name, 1.0))
        history = list(win.messages)
        QTest.keyClicks(win.input, prompt)
        gaps.start()
        QTest.keyClick(win.input, Qt.Key.Key_Return)
        result = wait(win.answered, 120)
        gaps.active = False
        want = win.rt.chat(history + [{"role": "user", "content": prompt}], adapters, temperature=0.0, max_tokens=64)
        checks.append({"adapters": adapters, "shown": last_answer(win), "result": result.text, "chat": want.text,
                       "tok_s": result.tokens_per_second})

    turn(JSON_PROMPT, {})  # the base alone
    turn(JSON_PROMPT, {"json": 1.0})  # the json adapter switched on
    turn("Spell out the digits: 90210", {"spell": 1.0, "json": 0.0})  # switched to another
    report["turns"] = checks

    # Stop during a long answer
    win.max_tokens = 1500
    for name in report["adapters"]:
        win.set_adapter(name, False)
    pieces = []
    win.job = None
    QTest.keyClicks(win.input, LONG_PROMPT)
    gaps.start()
    QTest.keyClick(win.input, Qt.Key.Key_Return)
    win.job.signals.piece.connect(pieces.append)
    deadline = time.time() + 60
    while len(pieces) < 30 and time.time() < deadline:
        QTest.qWait(5)
    t_click = time.perf_counter()
    QTest.mouseClick(win.stop_btn, Qt.MouseButton.LeftButton)
    result = wait(win.answered, 10)
    report["stop"] = {"latency_ms": (time.perf_counter() - t_click) * 1000, "finish_reason": result.finish_reason,
                      "tokens": result.completion_tokens, "busy_contexts_after": win.rt.busy_contexts,
                      "send_enabled_after": win.send_btn.isEnabled()}
    gaps.active = False
    report["max_ui_gap_ms"] = gaps.max_gap * 1000
    report["status_bar"] = win.statusBar().currentMessage()
    QTest.qWait(50)
    shot = Path(out_dir) / "desktop-app.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    report["screenshot"] = str(shot) if win.grab().save(str(shot)) else None
    print(json.dumps(report))
    win.close()
    app.quit()


if __name__ == "__main__":
    main(*sys.argv[1:4])
