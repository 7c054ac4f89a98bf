"""A multi-turn conversation over a Runtime that keeps its KV state between turns.

The session re-renders the whole conversation each turn; the context pool reuses
the KV of the longest prefix already evaluated under the same adapter set, so a
turn only evaluates what is new. Switching sets (``use``) recomputes the history
under the new set, and switching back restores the earlier set's snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .chat import check_messages
from .request import Completion, SamplingParams
from .registry import check_scale

if TYPE_CHECKING:
    from .runtime import Adapters, Runtime, TextStream


class Session:
    """Created by :meth:`Runtime.session`; not meant to be shared between threads."""

    def __init__(self, rt: Runtime, adapters: Adapters, messages: Sequence[Mapping[str, str]], options: dict[str, Any]) -> None:
        self._rt = rt
        self.messages: list[dict[str, str]] = check_messages(messages) if messages else []
        self.options = dict(options)
        SamplingParams.build(**self.options)  # reject bad options now, not at the first turn
        self.adapters: dict[str, float] = {}
        self.use(adapters)

    def use(self, adapters: Adapters = None) -> None:
        """Switch the adapter set for the following turns (``None`` or ``{}``: the base)."""
        adapters = dict(adapters or {})
        self._rt.check_adapters(adapters)
        infos = self._rt.adapters
        # None: the adapter's default scale, fixed now so later turns use the same mix
        self.adapters = {n: infos[n].scale if s is None else check_scale(n, s) for n, s in adapters.items()}

    def send(self, text: str, **options: Any) -> Completion:
        """Add a user turn and return the assistant's answer (kept in the history)."""
        return self.stream(text, **options).consume()

    def stream(self, text: str, **options: Any) -> TextStream:
        """Like :meth:`send`, as an iterator of text pieces."""
        from .runtime import TextStream

        turn = check_messages([{"role": "user", "content": text}])
        messages = self.messages + turn
        inner = self._rt.chat_stream(messages, self.adapters, **{**self.options, **options})

        def run():
            result = yield from inner
            self.messages = messages + [{"role": "assistant", "content": result.text}]
            return result

        return TextStream(run())

    def reset(self, messages: Sequence[Mapping[str, str]] = ()) -> None:
        """Forget the conversation (the adapter set stays)."""
        self.messages = check_messages(messages) if messages else []
