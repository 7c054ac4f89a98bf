"""The Tk recipe: a worker thread generates, a queue carries the pieces, ``after`` polls it.

Tk is not thread-safe: only the main thread may touch widgets. The worker never does; the UI
thread drains the queue every 15 ms with ``root.after``, so it never waits on the model.

    python examples/tk_chat.py BASE.gguf [ADAPTER.gguf]
"""

from __future__ import annotations

import queue
import sys
import threading
import tkinter as tk
from collections.abc import Mapping

from edge_lora import CancelToken, Completion, EdgeLoraError, Runtime


class TkChat:
    """An entry, a Send and a Stop button, and the answer streaming into a Text widget."""

    def __init__(self, root: tk.Tk, rt: Runtime, adapters: Mapping[str, float] | None = None) -> None:
        self.root, self.rt, self.adapters = root, rt, dict(adapters or {})
        self.messages: list[dict[str, str]] = []
        self.events: queue.Queue[tuple[str, object]] = queue.Queue()  # ("piece", str) | ("done", Completion)
        self.token: CancelToken | None = None
        self.last: Completion | None = None
        self.text = tk.Text(root, width=80, height=20)
        self.entry = tk.Entry(root, width=60)
        self.send_btn = tk.Button(root, text="Send", command=self.send)
        self.stop_btn = tk.Button(root, text="Stop", command=self.stop, state=tk.DISABLED)
        self.text.pack()
        self.entry.pack(side=tk.LEFT)
        self.send_btn.pack(side=tk.LEFT)
        self.stop_btn.pack(side=tk.LEFT)
        self.entry.bind("<Return>", lambda _e: self.send())

    def send(self, max_tokens: int = 256) -> None:
        prompt = self.entry.get().strip()
        if not prompt or self.token is not None:
            return
        self.entry.delete(0, tk.END)
        self.messages.append({"role": "user", "content": prompt})
        self.text.insert(tk.END, f"You: {prompt}\nAssistant: ")
        self.token = CancelToken()
        self.send_btn.config(state=tk.DISABLED)
        self.stop_btn.config(state=tk.NORMAL)
        args = (list(self.messages), self.token, max_tokens)
        threading.Thread(target=self._generate, args=args, daemon=True).start()
        self.root.after(15, self._pump)

    def stop(self) -> None:
        if self.token is not None:
            self.token.cancel()

    def _generate(self, messages: list[dict[str, str]], token: CancelToken, max_tokens: int) -> None:
        # the worker thread: no widget calls here, only the queue
        try:
            stream = self.rt.chat_stream(messages, self.adapters, temperature=0.0, max_tokens=max_tokens, cancel=token)
            for piece in stream:
                self.events.put(("piece", piece))
        except EdgeLoraError as exc:  # shown in the window; the UI stays usable
            self.events.put(("error", str(exc)))
            return
        self.events.put(("done", stream.result))

    def _pump(self) -> None:
        # the UI thread: drain what the worker produced, then poll again
        while True:
            try:
                kind, value = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "piece":
                self.text.insert(tk.END, value)
            elif kind == "error":
                self.messages.pop()
                self.text.insert(tk.END, f"[error: {value}]\n")
                self.token = None
                self.send_btn.config(state=tk.NORMAL)
                self.stop_btn.config(state=tk.DISABLED)
                return
            else:
                self._finish(value)
                return
        self.root.after(15, self._pump)

    def _finish(self, result: Completion) -> None:
        self.messages.append({"role": "assistant", "content": result.text})
        self.text.insert(tk.END, "\n")
        self.last, self.token = result, None
        self.send_btn.config(state=tk.NORMAL)
        self.stop_btn.config(state=tk.DISABLED)


def main() -> None:
    root = tk.Tk()
    root.title("edge-lora Tk chat")
    rt = Runtime(sys.argv[1], n_ctx=2048)
    adapters = {}
    if len(sys.argv) > 2:
        rt.load_adapter("a", sys.argv[2])
        adapters = {"a": 1.0}
    chat = TkChat(root, rt, adapters)
    root.mainloop()
    chat.stop()
    rt.close()  # safe while the worker still generates: it stops at its next token


if __name__ == "__main__":
    main()
