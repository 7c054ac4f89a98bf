"""Cancelling a call from another thread (a UI's Stop button, a request deadline)."""

from __future__ import annotations

import threading


class CancelToken:
    """Pass to ``Runtime.complete/chat/stream/chat_stream/logits(cancel=token)``; ``token.cancel()``
    from any thread stops that call: within one token while generating (the result comes back with
    ``finish_reason == "cancelled"`` and the text so far), and within one graph node of llama.cpp
    while a prompt is evaluated. ``logits`` raises :class:`~edge_lora.CancelledError` instead.
    A token stays cancelled; use a new one per call."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
