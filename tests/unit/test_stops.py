"""Stop strings over token pieces: nothing of a stop string is ever shown, text is never lost."""

from __future__ import annotations

import pytest

from edge_lora.runtime.stops import StopScanner


def _run(pieces: list[bytes], stops: tuple[str, ...]) -> tuple[list[str], StopScanner]:
    sc = StopScanner(stops)
    shown = []
    for p in pieces:
        shown.append(sc.feed(p))
        if sc.stopped:
            break
    shown.append(sc.finish())
    return shown, sc


def test_no_stops_passes_everything_through():
    shown, sc = _run([b"he", b"llo"], ())
    assert shown == ["he", "llo", ""] and sc.text == "hello" and not sc.stopped


def test_a_stop_split_over_pieces_is_held_back_then_cut():
    shown, sc = _run([b"one\n", b"\n", b"two"], ("\n\n",))
    assert "".join(shown) == "one" and sc.text == "one" and sc.stopped
    assert shown[0] == "one"  # the first newline is held: it may start the stop


def test_a_false_start_is_released():
    shown, sc = _run([b"a<", b"b", b"<end>"], ("<end>",))
    assert shown[:2] == ["a", "<b"] and sc.text == "a<b" and sc.stopped


def test_held_text_comes_out_at_the_end():
    shown, sc = _run([b"ab", b"<en"], ("<end>",))
    assert shown == ["ab", "", "<en"] and sc.text == "ab<en" and not sc.stopped


def test_multibyte_characters_across_pieces():
    euro = "€".encode()  # 3 bytes
    shown, sc = _run([euro[:1], euro[1:], b"!"], ())
    assert "".join(shown) == "€!" and shown[0] == ""


@pytest.mark.parametrize("stops", [("xyz",), ("yz", "xyz"), ("q", "z")])
def test_shown_text_is_always_a_prefix_of_the_result(stops):
    shown, sc = _run([b"w", b"x", b"y", b"z", b"tail"], stops)
    assert "".join(shown) == sc.text and sc.stopped
    assert not any(s in sc.text for s in stops)
