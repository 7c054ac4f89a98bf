"""The step batcher over a stand-in context that records each decode: steps of sequences that
step together go in one decode per adapter set, within n_batch; a member slow to come back is
parked, not waited for; a failed decode raises in each of its callers; prompts go in chunks."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_lora.errors import CancelledError, NativeError
from edge_lora.runtime.batch import PREFILL_CHUNK, StepBatcher


class Adapter:
    def __init__(self, serial: int) -> None:
        self.serial = serial


class FakeContext:
    n_vocab = 3

    def __init__(self, n_batch: int = 512, delay: float = 0.01) -> None:
        self.n_batch = n_batch
        self.delay = delay
        self.applied: tuple = ()
        self.calls: list[tuple[tuple, list[tuple[int, int]]]] = []  # (adapters key, [(seq, n tokens)])
        self.fail = False

    def decode_steps(self, steps, adapters):
        key = tuple((a.serial, float(s)) for a, s in adapters)
        self.calls.append((key, [(seq, len(toks)) for seq, toks, _, _ in steps]))
        time.sleep(self.delay)
        if self.fail:
            raise NativeError("llama_decode failed (-1)")
        self.applied = key
        # logits: row r of a step is [seq, start + r, 0]
        return [np.array([[seq, start + r, 0] for r in (range(len(toks)) if rows else [len(toks) - 1])], np.float32)
                for seq, toks, start, rows in steps]


A, B = [(Adapter(1), 1.0)], [(Adapter(2), 1.0)]


def _run(batcher: StepBatcher, jobs: list[tuple[int, list, int]], n_steps: int) -> dict[int, list]:
    """Each job (seq, adapters, start) steps n_steps times from its own thread."""
    out: dict[int, list] = {}
    go = threading.Barrier(len(jobs))

    def job(seq: int, adapters: list, start: int) -> None:
        go.wait()
        out[seq] = [batcher.step(seq, [7], start + i, False, adapters) for i in range(n_steps)]
        batcher.leave(seq)

    threads = [threading.Thread(target=job, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_steps_of_one_set_share_a_decode_and_get_their_own_rows():
    ctx = FakeContext()
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    out = _run(b, [(s, A, 10 * s) for s in range(4)], 6)
    for s in range(4):
        assert [int(o[0, 1]) for o in out[s]] == [10 * s + i for i in range(6)]  # its own row, each step
        assert all(int(o[0, 0]) == s for o in out[s])
    assert b.steps == 24 and b.decodes < 12  # most steps went four to a decode
    assert max(len(steps) for _, steps in ctx.calls) == 4


def test_two_sets_decode_apart_the_current_set_first():
    ctx = FakeContext()
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    _run(b, [(0, A, 0), (1, B, 0), (2, A, 0), (3, B, 0)], 5)
    for key, steps in ctx.calls:
        seqs = {s for s, _ in steps}
        assert seqs <= {0, 2} or seqs <= {1, 3}, ctx.calls  # never two sets in one decode
    switches = sum(1 for (k1, _), (k2, _) in zip(ctx.calls, ctx.calls[1:]) if k1 != k2)
    assert switches <= len(ctx.calls) - 1


def test_a_batch_is_split_to_fit_n_batch():
    ctx = FakeContext(n_batch=2)
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    _run(b, [(s, A, 0) for s in range(5)], 3)
    assert all(sum(n for _, n in steps) <= 2 for _, steps in ctx.calls)


def test_a_slow_member_is_parked_not_waited_for():
    ctx = FakeContext(delay=0.002)
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    b.step(1, [7], 0, False, A)  # seq 1 joins, then never steps again (a stream left unread)
    t0 = time.perf_counter()
    for i in range(20):
        b.step(0, [7], i, False, A)
    assert time.perf_counter() - t0 < 1.0  # waited at most a few ms once, not 20 times a timeout
    b.leave(1)


def test_a_failed_decode_raises_in_every_caller():
    ctx = FakeContext()
    ctx.fail = True
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    errors: list = []

    def job(seq: int) -> None:
        try:
            b.step(seq, [7], 0, False, A)
        except NativeError as e:
            errors.append(e)

    threads = [threading.Thread(target=job, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 3


def test_a_prompt_goes_in_chunks_and_a_cancel_stops_it_between_them():
    ctx = FakeContext(delay=0)
    b = StepBatcher(ctx)  # type: ignore[arg-type]
    n = 2 * PREFILL_CHUNK + 5
    last = b.step(0, list(range(n)), 0, False, A)
    assert [c[1] for c in ctx.calls] == [[(0, PREFILL_CHUNK)], [(0, PREFILL_CHUNK)], [(0, 5)]]
    assert last.shape == (1, 3) and int(last[0, 1]) == n - 1
    rows = b.step(0, list(range(n)), n, True, A)
    assert rows.shape == (n, 3) and [int(r) for r in rows[:, 1]] == list(range(n, 2 * n))
    calls = len(ctx.calls)
    with pytest.raises(CancelledError):
        b.step(0, list(range(n)), 0, False, A, cancelled=lambda: len(ctx.calls) > calls)
    assert len(ctx.calls) == calls + 1  # stopped after its first chunk
