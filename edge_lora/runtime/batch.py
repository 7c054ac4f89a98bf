"""Batched decoding: the generation steps of a context's sequences run as one ``llama_decode``.

Each call generating on a sequence of a shared context (``n_seq`` > 1) hands its step (the
token it sampled, and a draft after it with speculative decoding) to the context's
:class:`StepBatcher` and waits. The first step to arrive waits for the context's other
generating sequences to hand theirs in too, then evaluates all of them together, one
``llama_decode`` per adapter set (llama.cpp applies adapters per context, and re-plans the graph
when they change: the scheduler gives a call a context that runs its set when it can), and
hands each call the logits of its rows. On a CPU a decode streams the weights once for the
whole batch, so a step of eight sequences costs little more than one (llama.cpp's server and
vLLM batch the same way).

A sequence whose caller is slow to come back (a stream left unconsumed, a long grammar check)
is not waited for: after ``max(2 ms, half the last step's time)`` the others go without it and
it is *parked* until it hands in its next step, so no call is held up by another. A prompt is
evaluated the same way, a chunk of :data:`PREFILL_CHUNK` tokens per step (llama.cpp's server and
vLLM's chunked prefill): a long prompt does not stop the calls generating beside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..engine.native import NativeAdapter, NativeContext, adapters_key
from ..errors import CancelledError

Applied = Sequence[tuple[NativeAdapter, float]]
#: tokens of a prompt evaluated per step in a shared context
PREFILL_CHUNK = 128


@dataclass
class _Step:
    seq: int
    tokens: Sequence[int]
    start: int
    all_rows: bool
    adapters: Applied
    out: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    key: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.key = adapters_key(self.adapters)


class StepBatcher:
    """Merges the concurrent steps of one context's sequences into batched decodes."""

    def __init__(self, ctx: NativeContext) -> None:
        self.ctx = ctx
        self._cond = threading.Condition()
        self._pending: list[_Step] = []
        self._members: set[int] = set()  # sequences generating now
        self._parked: set[int] = set()  # members not waited for until their next step
        self._leading = False
        self._last_ms = 0.0
        #: batched decodes run, and the steps they held (steps / decodes: the mean batch)
        self.decodes = 0
        self.steps = 0

    def step(self, seq: int, tokens: Sequence[int], start: int, all_rows: bool, adapters: Applied,
             cancelled: Callable[[], bool] | None = None) -> np.ndarray:
        """Evaluate ``tokens`` at positions ``start...`` of ``seq`` under ``adapters``, batched with
        the other sequences' steps; returns the logits ``[len(tokens), n_vocab]`` with ``all_rows``,
        else ``[1, n_vocab]`` (its last token's). Raises what the decode raised.

        A prompt goes :data:`PREFILL_CHUNK` tokens at a time, each chunk a step batched with the
        others' (chunked prefill: the calls generating meanwhile go on, a token per chunk);
        ``cancelled`` is checked between chunks (:class:`CancelledError`)."""
        size = max(1, min(PREFILL_CHUNK, self.ctx.n_batch))
        if len(tokens) <= size and cancelled is None:
            return self._one(seq, tokens, start, all_rows, adapters)
        outs = []
        for off in range(0, len(tokens), size):
            if cancelled is not None and cancelled():
                raise CancelledError("the evaluation was cancelled")
            outs.append(self._one(seq, tokens[off : off + size], start + off, all_rows, adapters))
        return np.concatenate(outs) if all_rows else outs[-1]

    def _one(self, seq: int, tokens: Sequence[int], start: int, all_rows: bool, adapters: Applied) -> np.ndarray:
        me = _Step(seq, tokens, start, all_rows, adapters)
        with self._cond:
            self._members.add(seq)
            self._parked.discard(seq)
            self._pending.append(me)
            self._cond.notify_all()
            waited_from = time.perf_counter()
            while not me.done:
                if not self._leading:
                    waiting = {s.seq for s in self._pending}
                    late = self._members - self._parked - waiting
                    patience = max(0.002, self._last_ms / 2000)
                    if not late or time.perf_counter() - waited_from >= patience:
                        self._parked |= late
                        batch, self._pending = self._pending, []
                        self._leading = True
                        break
                    self._cond.wait(patience)
                else:
                    self._cond.wait(0.05)
                    waited_from = time.perf_counter()
            else:
                return self._result(me)
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return self._result(me)

    def leave(self, seq: int) -> None:
        """``seq``'s call stopped generating: no step waits for it any more."""
        with self._cond:
            self._members.discard(seq)
            self._parked.discard(seq)
            self._cond.notify_all()

    @staticmethod
    def _result(me: _Step) -> np.ndarray:
        if me.error is not None:
            raise me.error
        assert me.out is not None
        return me.out

    def _run(self, batch: list[_Step]) -> None:
        """Decode ``batch``: one decode per adapter set (the context's current set first, so
        that a step switches adapters only when the batch needs another set), each within
        ``n_batch`` tokens."""
        t0 = time.perf_counter()
        groups: dict[tuple, list[_Step]] = {}
        for s in batch:
            groups.setdefault(s.key, []).append(s)
        current = self.ctx.applied
        order = sorted(groups, key=lambda k: k != current)
        for k in order:
            chunk: list[_Step] = []
            size = 0
            for s in groups[k] + [None]:  # type: ignore[list-item]
                if s is None or (chunk and size + len(s.tokens) > self.ctx.n_batch):
                    self._decode(chunk)
                    chunk, size = [], 0
                if s is not None:
                    chunk.append(s)
                    size += len(s.tokens)
        self._last_ms = (time.perf_counter() - t0) * 1000
        self.decodes += len(order)
        self.steps += len(batch)

    def _decode(self, chunk: list[_Step]) -> None:
        if not chunk:
            return
        try:
            outs = self.ctx.decode_steps([(s.seq, s.tokens, s.start, s.all_rows) for s in chunk], chunk[0].adapters)
        except BaseException as e:  # each waiting call raises it (and clears its own KV)
            with self._cond:
                for s in chunk:
                    s.error, s.done = e, True
                self._cond.notify_all()
            return
        with self._cond:
            for s, out in zip(chunk, outs):
                s.out, s.done = out, True
            self._cond.notify_all()
