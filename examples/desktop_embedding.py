"""Desktop-style embedding: generation on a background thread, text streamed into a callback.

A UI thread must never block on the model. ``Assistant.ask`` returns at once; a
worker thread streams pieces to ``on_piece`` and the final result to ``on_done``
(a GUI would marshal these onto its own thread, e.g. ``root.after`` in Tk or a Qt
signal). ``cancel()`` stops a generation early and frees its context.

    python examples/desktop_embedding.py BASE.gguf [NAME=ADAPTER.gguf]
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from edge_lora import Completion, Runtime


class Assistant:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cancel = threading.Event()

    def ask(self, prompt: str, adapters: dict[str, float], on_piece: Callable[[str], None],
            on_done: Callable[[Completion | None, BaseException | None], None]) -> threading.Thread:
        self._cancel.clear()

        def work() -> None:
            stream = None
            try:
                stream = self.rt.chat_stream([{"role": "user", "content": prompt}], adapters,
                                             temperature=0.0, max_tokens=24)
                for piece in stream:
                    if self._cancel.is_set():
                        break
                    on_piece(piece)
                on_done(stream.result, None)
            except BaseException as exc:  # noqa: BLE001 - handed to the UI
                on_done(None, exc)
            finally:
                if stream is not None:
                    stream.close()

        t = threading.Thread(target=work, daemon=True)
        t.start()
        return t

    def cancel(self) -> None:
        self._cancel.set()


def main(base: str, specs: list[str]) -> int:
    with Runtime(base, n_ctx=512) as rt:
        mix = {}
        for spec in specs:
            name, path = spec.split("=", 1)
            rt.load_adapter(name, path)
            mix[name] = 1.0
        pieces: list[str] = []
        done = threading.Event()

        def on_done(result: Completion | None, error: BaseException | None) -> None:
            if error is not None:
                print(f"\nerror: {error}")
            else:
                print(f"\n[done: {result.completion_tokens} tokens, {result.finish_reason}]" if result else "\n[cancelled]")
            done.set()

        Assistant(rt).ask("Say something nice.", mix, pieces.append, on_done)
        ui_ticks = 0
        while not done.wait(0.001):  # the "UI loop" keeps running while the model streams
            ui_ticks += 1
        print(f"streamed {len(pieces)} pieces: {''.join(pieces)!r}; the UI loop ticked {ui_ticks} times meanwhile")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
