"""KV state as segments of (adapter set, tokens), and the snapshot store, over a stand-in context
that records what its KV holds (the invariant: the context's KV == the segments)."""

from __future__ import annotations

import pytest

from edge_lora.cancel import CancelToken
from edge_lora.errors import CancelledError, ContextOverflowError
from edge_lora.runtime.kv import KVState, Segment, SnapshotStore, cut, one_segment, reusable

A = (("a", 1, 1.0),)
B = (("b", 2, 0.5),)
BASE: tuple = ()


class FakeContext:
    n_ctx = 64
    n_seq = 1

    def __init__(self) -> None:
        self.kv: list[int] = []
        self.abort = None
        self.fail_at: int | None = None  # decode aborts after writing this many tokens
        self.can_truncate = True

    def clear(self, seq: int = 0) -> None:
        self.kv = []

    def truncate(self, n: int, seq: int = 0) -> bool:
        if not self.can_truncate:
            return False
        self.kv = self.kv[:n]
        return True

    def save_state(self, seq: int = 0) -> bytes:
        return bytes(self.kv)

    def load_state(self, data: bytes, seq: int = 0) -> bool:
        self.kv = list(data)
        return True

    def abort_when(self, check) -> None:
        self.abort = check

    def decode(self, tokens, start, *, seq=0, adapters=None, all_logits=False, all_rows=False, copy_last=False,
               abort=None):
        if start + len(tokens) > self.n_ctx:
            raise ContextOverflowError("too long", needed=start + len(tokens), n_ctx=self.n_ctx)
        assert start == len(self.kv), "decode must continue where the KV ends"
        self.abort = abort
        try:
            for i, t in enumerate(tokens):
                if (self.fail_at is not None and i == self.fail_at) or (self.abort and self.abort()):
                    raise CancelledError("aborted")
                self.kv.append(t)
        finally:
            self.abort = None  # the real context removes its callback after the decode too
        return [[0.0]] * len(tokens) if all_logits else None


@pytest.fixture()
def kv() -> KVState:
    return KVState(FakeContext())


def _check(kv: KVState) -> None:
    assert kv.ctx.kv == kv.tokens  # the invariant


def test_decode_extends_one_segment_per_set(kv):
    kv.decode(BASE, [1, 2, 3])
    kv.decode(BASE, [4])
    assert kv.segments == (Segment(BASE, (1, 2, 3, 4)),)
    kv.decode(A, [5, 6])  # continuing under another set (aLoRA's shape): a second segment
    assert kv.segments == (Segment(BASE, (1, 2, 3, 4)), Segment(A, (5, 6))) and kv.key == A
    _check(kv)


def test_reuse_only_under_the_set_that_computed_it(kv):
    kv.decode(A, [1, 2, 3, 4])
    assert kv.reusable(one_segment(A, [1, 2, 3, 9])) == 3
    assert kv.reusable(one_segment(B, [1, 2, 3, 4])) == 0
    assert kv.reusable(one_segment(A, [1, 2, 3, 4, 5])) == 4
    segs = (Segment(BASE, (1, 2)), Segment(A, (3, 4)))
    assert reusable(segs, one_segment(BASE, [1, 2, 3])) == 2  # the base part, not the adapter's after it
    assert reusable(segs, one_segment(A, [1, 2, 3])) == 0  # KV after a base segment is not A's from the start


def test_reuse_of_a_history_of_several_segments():
    """An aLoRA call wants (base, up to the invocation) then (aLoRA, from it on)."""
    held = (Segment(BASE, (1, 2, 3, 4)),)
    assert reusable(held, (Segment(BASE, (1, 2, 3)), Segment(A, (4, 5)))) == 3  # 4 was the base's, not A's
    assert reusable(held, (Segment(BASE, (1, 2, 3, 4)), Segment(A, (5, 6)))) == 4
    assert reusable(held, (Segment(BASE, (1, 2, 3, 4, 7)), Segment(A, (5,)))) == 4
    held = (Segment(BASE, (1, 2)), Segment(A, (3, 4, 5)))
    assert reusable(held, (Segment(BASE, (1, 2)), Segment(A, (3, 4, 9)))) == 4
    assert reusable(held, (Segment(BASE, (1, 2)), Segment(A, (3, 4, 5, 6)))) == 5
    assert reusable(held, (Segment(BASE, (1, 2, 3)), Segment(A, (4, 5)))) == 2  # 3 now under the base
    assert reusable(held, one_segment(BASE, [1, 2, 3, 4])) == 2  # back to the base: its prefix stays
    assert reusable(held, ()) == 0 and reusable((), one_segment(A, [1])) == 0
    assert cut(held, 3) == (Segment(BASE, (1, 2)), Segment(A, (3,))) and cut(held, 0) == ()


def test_truncate_cuts_segments_and_clears_when_it_cannot(kv):
    kv.decode(BASE, [1, 2])
    kv.decode(A, [3, 4, 5])
    assert kv.truncate(3) == 3 and kv.segments == (Segment(BASE, (1, 2)), Segment(A, (3,)))
    _check(kv)
    assert kv.truncate(10) == 3  # nothing beyond the end
    kv.ctx.can_truncate = False
    assert kv.truncate(1) == 0 and kv.segments == () and kv.ctx.kv == []


def test_a_cancelled_or_failed_decode_leaves_nothing(kv):
    kv.decode(A, [1, 2])
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        kv.decode(A, [3, 4, 5], cancel=token)
    assert kv.segments == () and kv.ctx.kv == [] and kv.ctx.abort is None  # the callback is removed
    kv.decode(A, [1, 2])
    with pytest.raises(ContextOverflowError):  # refused before anything is evaluated: kept
        kv.decode(A, list(range(100)))
    assert kv.tokens == [1, 2]
    kv.ctx.fail_at = 1
    with pytest.raises(CancelledError):
        kv.decode(A, [3, 4])
    assert kv.segments == () and kv.ctx.kv == []


def test_restore_sets_the_segments(kv):
    kv.decode(A, [7, 8, 9])
    snap = kv.segments, kv.save()
    kv.clear()
    assert kv.restore(*snap) and kv.segments == (Segment(A, (7, 8, 9)),)
    _check(kv)


def _segs(key, n, start=0):
    return (Segment(key, tuple(range(start, start + n))),)


def test_snapshot_store_best_prefix_redundancy_and_budget():
    store = SnapshotStore(max_bytes=250, min_tokens=4)
    store.put(_segs(A, 3), b"x" * 10)  # under min_tokens
    assert len(store) == 0
    store.put(_segs(A, 5), b"a" * 100)
    store.put(_segs(A, 8), b"b" * 100)  # makes the 5-token one redundant
    assert store.histories() == [_segs(A, 8)] and store.bytes_used == 100
    store.put(_segs(B, 6), b"c" * 100)
    snap = store.best(one_segment(A, list(range(6)) + [99]))
    assert (snap.n, snap.segments) == (6, _segs(A, 8))
    assert store.best(one_segment(B, [5, 5])) is None
    store.put(_segs(BASE, 6, start=50), b"d" * 100)  # over budget: the least recently used goes
    assert store.histories() == [_segs(A, 8), _segs(BASE, 6, start=50)] and store.bytes_used == 200


def test_dropping_an_adapter_drops_every_history_computed_with_it():
    store = SnapshotStore(max_bytes=1000, min_tokens=1)
    mixed = (Segment(BASE, (1, 2)), Segment(A + B, (3,)))
    store.put(mixed, b"m")
    store.put(_segs(A, 4), b"a")
    store.put(_segs(B, 4), b"b")
    store.drop_adapter(2)  # b's uid
    assert store.histories() == [_segs(A, 4)] and store.bytes_used == 1
