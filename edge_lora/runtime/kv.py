"""What a context's KV cache holds, and the snapshots kept of it.

A context's KV holds a history of tokens, each computed under the adapter set that was active
(the set's names, load ids and scales: :data:`~.registry.SetKey`) with everything before it.
:class:`KVState` keeps that as ordered :class:`Segment` s ``[(set, tokens), ...]`` and is the
one owner of the invariant *what the context's KV holds == its segments*: only its methods
clear, truncate, restore or extend a context's KV. A call under set ``S`` may reuse the longest
prefix of its tokens held by leading segments computed under ``S`` (:func:`reusable`); KV
computed under another set is never reused. A call names the history it wants as segments
too: one for a plain call, several when an activated LoRA starts at its invocation (the base,
or the other adapters, up to it; see :mod:`.activation`), so the base's KV of a conversation
is reused by an aLoRA turn.

When a context leaves a set, its KV can be kept as a snapshot (:class:`SnapshotStore`,
bounded in bytes, least recently used evicted), so returning to that set restores the history
instead of recomputing it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..cancel import CancelToken
from ..errors import ContextOverflowError

if TYPE_CHECKING:
    from ..engine.native import NativeAdapter, NativeContext
    from .registry import SetKey


@dataclass(frozen=True)
class Segment:
    """Tokens whose KV was computed under the adapter set ``key`` (after the segments before it)."""

    key: SetKey
    tokens: tuple[int, ...]


Segments = tuple[Segment, ...]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(held: Sequence[Segment], want: Sequence[Segment]) -> int:
    """How many leading tokens of the history ``want`` the KV of ``held`` holds validly: each of
    them the same token computed under the same set, after the same tokens."""
    n = i = j = oi = oj = 0
    while i < len(held) and j < len(want):
        h, w = held[i], want[j]
        if h.key != w.key:
            break
        m = common_prefix(h.tokens[oi:], w.tokens[oj:])
        n, oi, oj = n + m, oi + m, oj + m
        if oi < len(h.tokens) and oj < len(w.tokens):
            break  # the tokens differ here
        if oi == len(h.tokens):
            i, oi = i + 1, 0
        if oj == len(w.tokens):
            j, oj = j + 1, 0
    return n


def one_segment(key: SetKey, tokens: Sequence[int]) -> Segments:
    """The history of ``tokens`` all computed under ``key``."""
    return (Segment(key, tuple(tokens)),) if len(tokens) else ()


def n_tokens(segments: Sequence[Segment]) -> int:
    return sum(len(s.tokens) for s in segments)


def cut(history: Sequence[Segment], n: int) -> Segments:
    """The first ``n`` tokens of ``history`` (its segments cut to fit)."""
    out: list[Segment] = []
    for s in history:
        if n <= 0:
            break
        out.append(s if len(s.tokens) <= n else Segment(s.key, s.tokens[:n]))
        n -= len(s.tokens)
    return tuple(out)


def _holds(segments: Sequence[Segment], uid: int) -> bool:
    return any(u == uid for s in segments for _, u, _ in s.key)


def _is_prefix(old: Segments, new: Segments) -> bool:
    """Whether the history ``old`` is a prefix of the history ``new`` (same sets, same tokens)."""
    if len(old) > len(new) or not old:
        return False
    for i, (o, n) in enumerate(zip(old, new)):
        last = i == len(old) - 1
        if o.key != n.key or (o.tokens != n.tokens if not last else n.tokens[: len(o.tokens)] != o.tokens):
            return False
    return True


class KVState:
    """What one sequence of a context holds in its KV (:class:`Segment` s); the only writer of
    that sequence's KV."""

    def __init__(self, ctx: NativeContext, seq: int = 0) -> None:
        self.ctx = ctx
        self.seq = seq
        self._last: np.ndarray | None = None  # the last decode's last logits, copied (a shared context)
        self._segments: list[Segment] = []
        #: the logits after the first ``n`` tokens, kept (:meth:`keep_logits`) while the KV holds them
        self._kept: tuple[int, np.ndarray] | None = None

    @property
    def segments(self) -> Segments:
        return tuple(self._segments)

    @property
    def tokens(self) -> list[int]:
        return [t for s in self._segments for t in s.tokens]

    @property
    def key(self) -> SetKey | None:
        """The set of the last segment (the one a continuation would extend), or None when empty."""
        return self._segments[-1].key if self._segments else None

    def __len__(self) -> int:
        return n_tokens(self._segments)

    def reusable(self, want: Sequence[Segment]) -> int:
        return reusable(self._segments, want)

    def holds(self, uid: int) -> bool:
        """Whether any of this KV was computed with the adapter loaded as ``uid``."""
        return _holds(self._segments, uid)

    def clear(self) -> None:
        self.ctx.clear(self.seq)
        self._segments = []
        self._kept = None

    def keep_logits(self) -> None:
        """Keep a copy of the last evaluated token's logits, valid while the KV holds its history
        (a later call with the same history then samples them without a decode)."""
        last = self._last if self._last is not None else self.ctx.last_logits().copy()
        self._kept = (len(self), last)

    def kept_logits(self, n: int) -> np.ndarray | None:
        """The kept logits after the first ``n`` tokens, if those are what was kept."""
        return self._kept[1] if self._kept is not None and self._kept[0] == n <= len(self) else None

    @property
    def kept(self) -> Kept | None:
        """``(n, logits)`` kept by :meth:`keep_logits` (a snapshot carries them), or None."""
        return self._kept

    def truncate(self, n: int) -> int:
        """Keep the first ``n`` tokens (their segments cut to fit); returns how many are kept:
        ``n``, or 0 when this memory cannot drop a suffix (then it is cleared)."""
        if n <= 0:
            self.clear()
            return 0
        if n >= len(self):
            return len(self)
        if not self.ctx.truncate(n, self.seq):
            self.clear()
            return 0
        self._segments = list(cut(self._segments, n))
        if self._kept is not None and self._kept[0] > n:
            self._kept = None
        return n

    def save(self) -> bytes:
        return self.ctx.save_state(self.seq)

    def restore(self, segments: Segments, state: bytes, kept: Kept | None = None) -> bool:
        """Load a snapshot's KV (and the logits it kept); False (and cleared) when llama.cpp refuses it."""
        if self.ctx.load_state(state, self.seq):
            self._segments = list(segments)
            self._kept = kept
            return True
        self.clear()
        return False

    def decode(self, key: SetKey, tokens: Sequence[int], *, adapters: Applied | None = None, all_logits: bool = False,
               all_rows: bool = False, cancel: CancelToken | None = None, via: StepFn | None = None) -> np.ndarray | None:
        """The one decode step: evaluate ``tokens`` after what the KV holds, under the set ``key``
        (``adapters``, applied in the same step; None: those already on the context), and record
        them. ``cancel`` aborts a long evaluation between graph nodes: :class:`CancelledError` is
        raised and the KV, partly written, is cleared. Returns every token's logits with
        ``all_logits``, else None (the last token's logits stay in the context for the sampler).

        ``via`` (a shared context's :meth:`.batch.StepBatcher.step`, bound to this sequence)
        evaluates the step batched with the context's other sequences: it returns the logits
        ``[len(tokens), n_vocab]`` with ``all_rows``, else ``[1, n_vocab]``, and so does this."""
        shared = self.ctx.n_seq > 1
        self._last = None
        try:
            if via is not None:
                out = via(tokens, len(self), all_rows or all_logits, adapters if adapters is not None else (),
                          (lambda: cancel.cancelled) if cancel is not None else None)
            else:
                out = self.ctx.decode(tokens, len(self), seq=self.seq, adapters=adapters, all_logits=all_logits,
                                      all_rows=all_rows, copy_last=shared,
                                      abort=(lambda: cancel.cancelled) if cancel is not None else None)
        except ContextOverflowError:
            raise  # refused before anything was evaluated
        except BaseException:
            self.clear()  # a partial evaluation (cancelled, or failed): nothing in the KV is reusable
            raise
        if out is not None and out.ndim == 1:  # the last logits, copied from a shared context
            self._last, out = out, None
        elif out is not None and not all_logits:
            self._last = out[-1]
        if self._segments and self._segments[-1].key == key:
            last = self._segments[-1]
            self._segments[-1] = Segment(key, last.tokens + tuple(tokens))
        else:
            self._segments.append(Segment(key, tuple(tokens)))
        return out


#: the adapters a step applies, with their scales
Applied = Sequence[tuple["NativeAdapter", float]]
#: a batched step: ``(tokens, start, all_rows, adapters, cancelled) -> logits``
StepFn = Callable[[Sequence[int], int, bool, Applied, "Callable[[], bool] | None"], np.ndarray]


#: logits kept after the first ``n`` tokens of a history: ``(n, logits [n_vocab])``
Kept = tuple[int, np.ndarray]


@dataclass(frozen=True)
class Snapshot:
    """A saved KV state: ``n`` of the asked tokens are reusable from it (see :meth:`SnapshotStore.best`),
    with the logits its context kept (``kept``), if any."""

    n: int
    segments: Segments
    state: bytes
    kept: Kept | None = None

    def logits_at(self, n: int) -> bool:
        """Whether the snapshot kept the logits after the first ``n`` tokens of its history."""
        return self.kept is not None and self.kept[0] == n <= n_tokens(self.segments)


class SnapshotStore:
    """KV snapshots keyed by their segments, bounded in bytes, LRU-evicted."""

    def __init__(self, max_bytes: int, min_tokens: int = 32) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._items: OrderedDict[Segments, tuple[bytes, Kept | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def histories(self) -> list[Segments]:
        """The segments of every snapshot kept, least recently used first."""
        with self._lock:
            return list(self._items)

    def put(self, segments: Sequence[Segment], state: bytes, kept: Kept | None = None) -> None:
        k = tuple(segments)
        size = len(state) + (kept[1].nbytes if kept is not None else 0)
        if size > self.max_bytes or n_tokens(k) < self.min_tokens:
            return
        with self._lock:
            # a longer snapshot of the same history makes its prefixes redundant
            for old in [o for o in self._items if _is_prefix(o, k)]:
                self._bytes -= _size(self._items.pop(old))
            self._items[k] = (state, kept)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= _size(dropped)

    def best(self, want: Sequence[Segment]) -> Snapshot | None:
        """The snapshot from which the most leading tokens of the history ``want`` are reusable
        (any prefix of a snapshot is valid KV), or None when none has any."""
        with self._lock:
            found, found_n = None, 0
            for k in self._items:
                n = reusable(k, want)
                if n > found_n:
                    found, found_n = k, n
            if found is None:
                return None
            self._items.move_to_end(found)
            return Snapshot(found_n, found, *self._items[found])

    def drop_adapter(self, uid: int) -> None:
        """Forget every snapshot whose history was computed with the adapter loaded as ``uid``."""
        with self._lock:
            for k in [k for k in self._items if _holds(k, uid)]:
                self._bytes -= _size(self._items.pop(k))


def _size(item: tuple[bytes, Kept | None]) -> int:
    state, kept = item
    return len(state) + (kept[1].nbytes if kept is not None else 0)
