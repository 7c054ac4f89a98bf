"""Which context runs which call: one sequence per context today.

Every call leases one context for its whole duration (a context is never shared by two
threads); ``n_parallel`` contexts run calls in parallel, further calls wait (a cancelled wait
ends at once). Before a call decodes, :meth:`Scheduler.prepare` makes its context's KV hold the
longest reusable prefix of its tokens under its adapter set, from the context itself or from a
snapshot, and keeps what the context is leaving as a snapshot. llama.cpp applies adapters per
context, so batching several sequences will group them by adapter set here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..cancel import CancelToken
from ..engine.native import ContextParams, NativeAdapter, NativeContext, NativeModel
from ..errors import CancelledError, InvalidRequestError
from .kv import KVState, Segments, SnapshotStore, n_tokens


@dataclass
class Slot:
    """One context and what its KV holds."""

    ctx: NativeContext
    kv: KVState = field(init=False)

    def __post_init__(self) -> None:
        self.kv = KVState(self.ctx)


class Scheduler:
    """``n`` contexts over one model, leased one call at a time."""

    def __init__(self, model: NativeModel, params: ContextParams, n: int, snapshots: SnapshotStore | None) -> None:
        self.snapshots = snapshots
        self._slots = [Slot(NativeContext(model, params)) for _ in range(n)]
        self._free = list(self._slots)
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

    @contextmanager
    def lease(self, cancel: CancelToken | None = None) -> Iterator[Slot]:
        """A free context for the caller's whole call; waits for one. Raises
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
            slot = self._free.pop()
        try:
            yield slot
        finally:
            with self._cond:
                self._free.append(slot)
                self._cond.notify()

    def detach(self, adapter: NativeAdapter, uid: int) -> None:
        """Take ``adapter`` (loaded as ``uid``) off every idle context so it can be freed, and drop
        the KV snapshots taken under it (no set holding it can come back: uids are never reused).

        Called when no call uses the adapter any more: a busy context then runs
        another set, and it replaces its adapters before it decodes anything.
        """
        if self.snapshots is not None:
            self.snapshots.drop_adapter(uid)
        with self._cond:
            holders = [s for s in self._free if s.ctx.holds_adapter(adapter)]
            for slot in holders:
                self._free.remove(slot)
        try:
            for slot in holders:
                slot.ctx.set_adapters(())
                slot.kv.clear()
        finally:
            with self._cond:
                self._free.extend(holders)
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
        for s in idle:
            s.ctx.close()
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

