"""edge-lora chat: a desktop app on edge-lora's public API (PySide6).

    python examples/desktop_app/app.py [BASE.gguf] [--adapters DIR]
    python examples/desktop_app/app.py --selftest BASE.gguf ADAPTER.gguf   # no window: JSON on stdout

Bundled by ``make bundle`` (PyInstaller, one folder, the portable engine inside).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_lora.engine.probe import frozen_dispatch  # noqa: E402


SELFTEST_PROMPT = "Spell out the digits: 90210"


def selftest(base: str, adapter: str, n_tokens: int) -> int:
    """Load a base and an adapter, generate greedily, print what happened (for the bundle tests)."""
    from edge_lora import Runtime, engine_summary

    with Runtime(base, n_ctx=512) as rt:
        rt.load_adapter("a", adapter)
        c = rt.chat([{"role": "user", "content": SELFTEST_PROMPT}], {"a": 1.0}, max_tokens=n_tokens, temperature=0.0)
        print(json.dumps({"tokens": c.tokens, "text": c.text, "engine": engine_summary()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    frozen_dispatch()  # in a bundle, the engine's check runs this same executable as its probe
    p = argparse.ArgumentParser(prog="edge-lora-chat")
    p.add_argument("base", nargs="?", help="base GGUF to load at start")
    p.add_argument("--adapters", type=Path, help="folder of GGUF adapters to offer")
    p.add_argument("--selftest", nargs=2, metavar=("BASE", "ADAPTER"))
    p.add_argument("--n-tokens", type=int, default=8)
    args = p.parse_args(argv)
    if args.selftest:
        return selftest(*args.selftest, args.n_tokens)

    from PySide6.QtWidgets import QApplication

    from window import ChatWindow

    app = QApplication(sys.argv[:1])
    win = ChatWindow(args.adapters)
    win.show()
    if args.base:
        win.load_base(args.base)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
