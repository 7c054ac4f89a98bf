"""Runtime work off the UI thread: loading the base and streaming answers, reported by Qt signals.

Qt widgets may only be touched from the UI thread. Each job here runs on a QThreadPool thread
and talks back through signals, which Qt queues to the UI thread (the receiver's thread).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from PySide6.QtCore import QObject, QRunnable, Signal

from edge_lora import CancelToken, EdgeLoraError, Runtime


class LoadSignals(QObject):
    progress = Signal(float)  # 0.0 .. 1.0, from llama.cpp's load progress
    loaded = Signal(object)  # the Runtime
    failed = Signal(str)


class LoadJob(QRunnable):
    """Load a base GGUF (the slow part: mapping the weights, the engine's first-use check)."""

    def __init__(self, path: str, n_ctx: int) -> None:
        super().__init__()
        self.path, self.n_ctx = path, n_ctx
        self.signals = LoadSignals()

    def run(self) -> None:
        try:
            rt = Runtime(self.path, n_ctx=self.n_ctx, on_load_progress=self.signals.progress.emit)
        except EdgeLoraError as exc:  # a typed error: show it, never crash the app
            self.signals.failed.emit(str(exc))
            return
        self.signals.loaded.emit(rt)


class ChatSignals(QObject):
    piece = Signal(str)  # a piece of the answer, as it is generated
    finished = Signal(object)  # the Completion (finish_reason "cancelled" after Stop)
    failed = Signal(str)


class ChatJob(QRunnable):
    """Stream one answer. ``cancel()`` (from the UI thread) stops it within one token."""

    def __init__(self, rt: Runtime, messages: Sequence[Mapping[str, str]], adapters: Mapping[str, float],
                 max_tokens: int) -> None:
        super().__init__()
        self.rt, self.messages, self.adapters, self.max_tokens = rt, list(messages), dict(adapters), max_tokens
        self.token = CancelToken()
        self.signals = ChatSignals()
        self.started_at = 0.0

    def cancel(self) -> None:
        self.token.cancel()

    def run(self) -> None:
        self.started_at = time.perf_counter()
        try:
            stream = self.rt.chat_stream(self.messages, self.adapters, temperature=0.0, max_tokens=self.max_tokens,
                                         cancel=self.token)
            for piece in stream:
                self.signals.piece.emit(piece)
        except EdgeLoraError as exc:
            self.signals.failed.emit(str(exc))
            return
        self.signals.finished.emit(stream.result)
