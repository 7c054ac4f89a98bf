"""Which adapters act on which tokens: activated LoRA (aLoRA) starts at its invocation.

A plain LoRA acts on every token. An aLoRA (PEFT's ``alora_invocation_tokens``, llama.cpp's
``adapter.alora.invocation_tokens``) acts only from the *start* of the last occurrence of its
invocation sequence in the prompt on, and on every generated token; the tokens before are
computed without it (PEFT ``tuners/lora/variants.py``: ``calculate_alora_offsets`` and
``ALoraLinearVariant.forward``). So a prompt runs as a few :class:`Run` s, each under the subset
of the call's adapters active there: the base's (or the other adapters') KV of a conversation
is reused up to the invocation, and only the tokens from it on are evaluated under the aLoRA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InvalidRequestError
from .kv import Segment, Segments

if TYPE_CHECKING:
    from .registry import AdapterSet


@dataclass(frozen=True)
class Run:
    """``tokens[start:end]`` are evaluated under ``aset``."""

    aset: AdapterSet
    start: int
    end: int


def last_occurrence(tokens: Sequence[int], sequence: Sequence[int]) -> int:
    """The index where the last occurrence of ``sequence`` in ``tokens`` starts, or -1."""
    n = len(sequence)
    first = sequence[0]
    for i in range(len(tokens) - n, -1, -1):
        if tokens[i] == first and list(tokens[i : i + n]) == list(sequence):
            return i
    return -1


def activation_starts(aset: AdapterSet, tokens: Sequence[int]) -> dict[str, int]:
    """Where each adapter of ``aset`` starts acting in ``tokens`` (0 for a plain LoRA).

    Raises :class:`InvalidRequestError` naming every aLoRA whose invocation sequence is not in
    ``tokens``: PEFT would then return the base's output under the adapter's name, which a caller
    who asked for the adapter cannot mean."""
    starts: dict[str, int] = {}
    missing: list[str] = []
    for (name, _, _), invocation in zip(aset.key, aset.invocations):
        if not invocation:
            starts[name] = 0
            continue
        i = last_occurrence(tokens, invocation)
        if i < 0:
            missing.append(f"{name!r}: its invocation tokens {list(invocation)} are not in the prompt")
        starts[name] = i
    if missing:
        raise InvalidRequestError(
            "an activated LoRA (aLoRA) acts only from its invocation sequence on, and the prompt does not contain it "
            "(add the invocation text the adapter was trained with, usually at the end of the prompt, or call "
            "without the adapter for the base's output)", missing, param="adapters")
    return starts


def plan(aset: AdapterSet, tokens: Sequence[int]) -> tuple[Run, ...]:
    """The runs that evaluate ``tokens`` under ``aset``; the last run is ``aset`` itself, and
    generated tokens continue under it."""
    starts = activation_starts(aset, tokens)
    cuts = sorted({s for s in starts.values() if s > 0})
    runs: list[Run] = []
    begin = 0
    for cut in cuts + [len(tokens)]:
        if cut > begin:
            active = {n for n, s in starts.items() if s <= begin}
            runs.append(Run(aset.subset(active), begin, cut))
        begin = cut
    return tuple(runs)


def segments(runs: Sequence[Run], tokens: Sequence[int]) -> Segments:
    """The KV history the runs make: one :class:`Segment` per run."""
    return tuple(Segment(r.aset.key, tuple(tokens[r.start : r.end])) for r in runs)
