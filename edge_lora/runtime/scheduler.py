"""Which context and sequence run which call.

A runtime has ``n`` sequences, ``n_seq`` to a llama context (each sequence with its own KV
cache): a call leases one sequence for its whole duration, further calls wait (a cancelled wait
ends at once). The generation steps of a context's sequences are decoded together
(:mod:`.batch`); llama.cpp applies adapters per context, so a call goes to a context whose
running calls use its adapter set, else to an idle one, else to any (its steps then decode
apart from the others'). Before a call decodes, :meth:`Scheduler.prepare` makes its sequence's
KV hold the longest reusable prefix of its tokens under its adapter set, from the sequence
itself or from a snapshot, and keeps what the sequence is leaving as a snapshot.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from ..cancel import CancelToken
from ..engine.native import ContextParams, NativeAdapter, NativeContext, NativeModel
from ..errors import CancelledError, InvalidRequestError
from .batch import StepBatcher
from .kv import KVState, Segments, SnapshotStore, n_tokens


@dataclass
class Slot:
    """One sequence of a context, and what its KV holds; ``batcher`` merges its generation steps
    with its context's other sequences' (None in a context of one sequence)."""

    ctx: NativeContext
    seq: int = 0
    batcher: StepBatcher | None = None
    kv: KVState = field(init=False)

    def __post_init__(self) -> None:
        self.kv = KVState(self.ctx, self.seq)


class Scheduler:
    """``n`` sequences over one model, ``n_seq`` to a context, leased one call at a time."""

    def __init__(self, model: NativeModel, params: ContextParams, n: int, snapshots: SnapshotStore | None,
                 n_seq: int = 1) -> None:
        self.snapshots = snapshots
        self._slots: list[Slot] = []
        for c in range(math.ceil(n / n_seq)):
            k = min(n_seq, n - c * n_seq)
            ctx = NativeContext(model, replace(params, n_seq=k))
            batcher = StepBatcher(ctx) if k > 1 else None
            self._slots += [Slot(ctx, s, batcher) for s in range(k)]
        self._contexts = list(dict.fromkeys(s.ctx for s in self._slots))
        self._free = list(self._slots)
        self._running: dict[int, tuple] = {}  # id(slot) -> the adapter set its call runs
        self._cond = threading.Condition()
        #: set by close(): generations stop at their next token, new leases are refused
        self.closing = threading.Event()

    @property
    def n_ctx(self) -> int:
        return self._slots[0].ctx.n_ctx

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def busy(self) -> int:
        with self._cond:
            return len(self._slots) - len(self._free)

    @property
    def batchers(self) -> list[StepBatcher]:
        return [b for b in dict.fromkeys(s.batcher for s in self._slots) if b is not None]

    @contextmanager
    def lease(self, cancel: CancelToken | None = None, key: tuple = ()) -> Iterator[Slot]:
        """A free sequence for the caller's whole call, under the adapter set ``key`` (what its
        steps apply: :func:`~..engine.native.adapters_key`); waits for one. Raises
        :class:`CancelledError` when ``cancel`` fires while waiting (within 0.1 s)."""
        with self._cond:
            while not self._free:
                if self.closing.is_set():
                    raise InvalidRequestError("this Runtime is closing")
                if cancel is not None and cancel.cancelled:
                    raise CancelledError("cancelled while waiting for a context")
                self._cond.wait(0.1)
            if self.closing.is_set():
                raise InvalidRequestError("this Runtime is closing")
            slot = self._pick(key)
            self._free.remove(slot)
            self._running[id(slot)] = key
        try:
            yield slot
        finally:
            if slot.batcher is not None:
                slot.batcher.leave(slot.seq)  # no step waits for this sequence any more
            with self._cond:
                del self._running[id(slot)]
                self._free.append(slot)
                self._cond.notify()

    def _pick(self, key: tuple) -> Slot:
        """A free sequence: in a context whose running calls all use ``key``, else in an idle
        context (the one that applies ``key`` already first), else any."""
        def rank(slot: Slot) -> tuple[int, int]:
            sets = {self._running[id(s)] for s in self._slots if s.ctx is slot.ctx and id(s) in self._running}
            if sets == {key}:
                return (0, 0)
            if not sets:
                return (1, 0 if slot.ctx.applied == key else 1)
            return (2, 0)
        return min(reversed(self._free), key=rank)

    def detach(self, adapter: NativeAdapter, uid: int) -> None:
        """Take ``adapter`` (loaded as ``uid``) off every context so it can be freed, clear the
        idle sequences' KV computed with it, and drop the KV snapshots taken under it (no set
        holding it can come back: uids are never reused).

        Called when no call uses the adapter any more: a call running on a context then runs
        another set, and every decode applies its own set first."""
        if self.snapshots is not None:
            self.snapshots.drop_adapter(uid)
        with self._cond:
            idle = [s for s in self._free if s.kv.holds(uid)]
            for slot in idle:
                self._free.remove(slot)
        try:
            for ctx in self._contexts:
                if ctx.holds_adapter(adapter):
                    ctx.set_adapters(())
            for slot in idle:
                slot.kv.clear()
        finally:
            with self._cond:
                self._free.extend(idle)
                self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop generations at their next token, wait up to ``timeout`` s for every context to be
        returned, and free them. A context still leased then (a stream left unconsumed in another
        thread) is never freed under its call: returns False, and the caller keeps the model."""
        self.closing.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._free) < len(self._slots) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            idle = list(self._free)
        for ctx in self._contexts:
            if all(s in idle for s in self._slots if s.ctx is ctx):
                ctx.close()
        return len(idle) == len(self._slots)

    # -- KV reuse ------------------------------------------------------------------
    def prepare(self, slot: Slot, want: Segments) -> int:
        """Make ``slot``'s KV hold the longest reusable prefix of the history ``want`` (the call's
        tokens, as segments under the sets that evaluate them), from the context itself or from a
        snapshot; what the context drops is kept as a snapshot first.

        Returns how many tokens are already evaluated: the whole history when the context holds
        it with its last logits kept (:meth:`KVState.kept_logits`: the caller samples those),
        else fewer, so the caller evaluates at least the last one and gets its logits.
        """
        kv = slot.kv
        total = n_tokens(want)
        held = kv.reusable(want)
        if held == total and kv.kept_logits(total) is not None:
            return kv.truncate(total)
        keep = min(held, total - 1)
        snap = self.snapshots.best(want) if self.snapshots is not None else None
        whole = snap is not None and snap.n == total and snap.logits_at(total) and slot.ctx.has_output
        usable = 0 if snap is None else total if whole else min(snap.n, total - 1)
        if snap is not None and usable > keep:
            self._stash(kv)
            keep = usable if kv.restore(snap.segments, snap.state, snap.kept) else 0
        elif len(kv) - keep >= (self.snapshots.min_tokens if self.snapshots is not None else 1):
            # leaving much of this history (another set, another conversation): keep it for a return
            self._stash(kv)
        return kv.truncate(keep)

    def _stash(self, kv: KVState) -> None:
        """Before a context leaves its history, keep its KV state for a later return."""
        if self.snapshots is None or not kv.segments or len(kv) < self.snapshots.min_tokens:
            return
        self.snapshots.put(kv.segments, kv.save(), kv.kept)

