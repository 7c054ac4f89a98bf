"""A thought split from the answer (``<think>`` tags), whole and streamed, without a model."""

from __future__ import annotations

import pytest

from edge_lora.runtime.reasoning import Thought, opened_by, split, thinks, with_thoughts
from edge_lora.runtime.request import Completion, TextStream, Timings


@pytest.mark.parametrize("text, opened, want", [
    ("<think>\nplan\n</think>\n\nanswer", False, ("plan", "answer")),
    ("plan</think>answer", True, ("plan", "answer")),  # DeepSeek R1: the prompt opened it
    ("still thinking", True, ("still thinking", "")),  # cut before the close
    ("<think>cut", False, ("cut", "")),
    ("just an answer", False, (None, "just an answer")),
    ("<think>\n\n</think>\n\nok", False, ("", "ok")),
])
def test_split(text, opened, want):
    assert split(text, opened) == want


def _stream(pieces, opened=False):
    def gen():
        yield from pieces
        return Completion("".join(pieces), [], "stop", 1, 1, 0, {}, Timings(1, 1, 1, 1))

    stream = TextStream(with_thoughts(gen(), opened))
    return list(stream), stream.result


def test_a_stream_marks_the_thought_and_the_result_splits_it():
    out, c = _stream(["<th", "ink>\nI should", " say hi</th", "ink>\n\nHi", " there"])
    assert "".join(p for p in out if isinstance(p, Thought)) == "I should say hi"
    assert "".join(p for p in out if not isinstance(p, Thought)) == "Hi there"
    assert (c.reasoning_content, c.content, c.text) == ("I should say hi", "Hi there", c.text)
    out, c = _stream(["Hello", " <think> is a tag"])  # no thought: all answer, as is
    assert out == ["Hello", " <think> is a tag"] and c.reasoning_content is None and c.content == c.text
    out, c = _stream(["plan", "</think>", "ok"], opened=True)
    assert [(type(p).__name__, p) for p in out] == [("Thought", "plan"), ("str", "ok")]


def test_templates_that_think():
    assert thinks("{{ '<think>' }}...{{ '</think>' }}") and not thinks("{{ messages }}")
    assert opened_by("<|Assistant|><think>\n") and not opened_by("<|im_start|>assistant\n")
