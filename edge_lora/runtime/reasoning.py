"""A thinking model's thought split from its answer: ``<think>...</think>`` (Qwen3, QwQ, DeepSeek
R1 and its distills, SmolLM3...), where the chat template uses those tags.

The thought is what comes before ``</think>`` (a leading ``<think>`` dropped); the answer what
follows. A generation prompt that opens the thought itself (DeepSeek R1's ends in ``<think>\\n``)
makes everything before ``</think>`` thought, and an answer that never closes it all thought
(cut by ``max_tokens``); otherwise an answer without ``</think>`` is all answer. A template that
closes the thought in the prompt (``enable_thinking: false``) gives an answer only.

In a stream, thought pieces are :class:`Thought` strings (a ``str`` subclass: a consumer that
does not care reads them as text); the server sends them as ``reasoning_content`` (vLLM's and
DeepSeek's name).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .request import Completion

OPEN, CLOSE = "<think>", "</think>"


class Thought(str):
    """A piece of the model's thought in a stream."""


def thinks(template: str) -> bool:
    """Whether a chat template writes thoughts in ``<think>`` tags."""
    return CLOSE in template


def opened_by(prompt: str) -> bool:
    """Whether the prompt ends inside an open thought (the template opened it)."""
    tail = prompt.rstrip()
    return tail.endswith(OPEN)


def split(text: str, opened: bool) -> tuple[str | None, str]:
    """(thought, answer) of a whole answer; thought None when there is none."""
    if not opened and not text.lstrip().startswith(OPEN):
        return None, text
    body = text.lstrip().removeprefix(OPEN) if not opened else text
    at = body.find(CLOSE)
    if at < 0:
        return body.strip(), ""
    return body[:at].strip(), body[at + len(CLOSE):].lstrip()


def with_thoughts(gen: Iterator[str], opened: bool) -> Generator[str, None, Completion]:
    """``gen``'s pieces with the thought's as :class:`Thought` (tags and the whitespace around
    them left out), and its :class:`Completion` with ``reasoning_content`` and ``content`` split."""
    text, sent = "", 0
    state = "lead" if opened else "start"  # start -> (lead -> thought -> after) -> answer
    try:
        while True:
            text += next(gen)
            while sent < len(text):
                rest = text[sent:]
                if state == "start":
                    head = rest.lstrip()
                    if not head or (OPEN.startswith(head) and len(head) < len(OPEN)):
                        break  # may still become "<think>"
                    if head.startswith(OPEN):
                        state, sent = "lead", sent + rest.index(OPEN) + len(OPEN)
                    else:
                        state = "answer"
                elif state in ("lead", "after"):
                    head = rest.lstrip()
                    sent += len(rest) - len(head)
                    if head:
                        state = "thought" if state == "lead" else "answer"
                elif state == "thought":
                    at = rest.find(CLOSE)
                    if at >= 0:
                        if rest[:at].strip():
                            yield Thought(rest[:at].rstrip())
                        state, sent = "after", sent + at + len(CLOSE)
                        continue
                    keep = next((k for k in range(min(len(CLOSE) - 1, len(rest)), 0, -1)
                                 if CLOSE.startswith(rest[-k:])), 0)
                    body = rest[: len(rest) - keep].rstrip()  # whitespace waits: it may end the thought
                    if body:
                        yield Thought(body)
                        sent += len(body)
                    break
                else:
                    yield rest
                    sent = len(text)
    except StopIteration as stop:
        result: Completion = stop.value
    if sent < len(text):
        yield Thought(text[sent:]) if state in ("lead", "thought") else text[sent:]
    thought, answer = split(result.text, opened)
    if thought is None:
        return result
    return replace(result, reasoning_content=thought, content=answer)
