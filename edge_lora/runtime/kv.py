"""A pool of llama contexts over one model, each remembering what its KV cache holds.

The concurrency model: every call leases one context for its whole duration (a
context is never shared by two threads); ``n_parallel`` contexts run calls in
parallel, further calls wait. What a context's KV cache holds is keyed by the
adapter set (names, load ids and scales) *and* the tokens, so KV computed under
one set is never reused under another. When a context switches sets, its KV state
is kept as a snapshot (bounded, least recently used evicted) so that returning to
a set used earlier restores the history instead of recomputing it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..engine.native import ContextParams, NativeAdapter, NativeContext, NativeModel
from ..cancel import CancelToken
from ..errors import CancelledError, InvalidRequestError
from .registry import AdapterSet, SetKey


@dataclass
class Slot:
    ctx: NativeContext
    kv_key: SetKey | None = None
    kv_tokens: list[int] = field(default_factory=list)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SnapshotStore:
    """KV snapshots keyed by (adapter set, tokens), bounded in bytes, LRU-evicted."""

    def __init__(self, max_bytes: int, min_tokens: int = 32) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._items: OrderedDict[tuple[SetKey, tuple[int, ...]], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: SetKey, tokens: Sequence[int], state: bytes) -> None:
        if len(state) > self.max_bytes or len(tokens) < self.min_tokens:
            return
        k = (key, tuple(tokens))
        with self._lock:
            # a longer snapshot of the same history makes its prefixes redundant
            for old in [o for o in self._items if o[0] == key and common_prefix(o[1], k[1]) == len(o[1])]:
                self._bytes -= len(self._items.pop(old))
            self._items[k] = state
            self._bytes += len(state)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def best(self, key: SetKey, tokens: Sequence[int]) -> tuple[int, list[int], bytes] | None:
        """The snapshot under ``key`` sharing the longest prefix with ``tokens``:
        ``(shared length, its tokens, state)``. Any prefix of a snapshot is valid KV."""
        with self._lock:
            found, found_n = None, 0
            for k in self._items:
                if k[0] == key:
                    n = common_prefix(k[1], tokens)
                    if n > found_n:
                        found, found_n = k, n
            if found is None:
                return None
            self._items.move_to_end(found)
            return found_n, list(found[1]), self._items[found]

    def drop_adapter(self, uid: int) -> None:
        """Forget every snapshot whose adapter set holds the adapter loaded as ``uid``."""
        with self._lock:
            for k in [k for k in self._items if any(u == uid for _, u, _ in k[0])]:
                self._bytes -= len(self._items.pop(k))


class ContextPool:
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
                slot.kv_key, slot.kv_tokens = None, []
                slot.ctx.clear()
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
    def prepare(self, slot: Slot, aset: AdapterSet, tokens: Sequence[int]) -> int:
        """Make ``slot``'s KV hold the longest reusable prefix of ``tokens`` under ``aset``.

        Returns how many tokens are already evaluated (always < len(tokens), so the
        caller evaluates at least the last one and gets its logits).
        """
        keep = common_prefix(slot.kv_tokens, tokens) if slot.kv_key == aset.key else 0
        keep = min(keep, len(tokens) - 1)
        snap = self.snapshots.best(aset.key, tokens[: len(tokens) - 1]) if self.snapshots is not None else None
        if snap is not None and snap[0] > keep:
            self._stash(slot)
            if slot.ctx.load_state(snap[2]):
                slot.kv_key, slot.kv_tokens, keep = aset.key, snap[1], snap[0]
            else:
                slot.kv_key, slot.kv_tokens, keep = None, [], 0
        elif slot.kv_key != aset.key or len(slot.kv_tokens) - keep >= (self.snapshots.min_tokens if self.snapshots is not None else 1):
            # leaving this set, or dropping much of its history: keep it for a later return
            self._stash(slot)
            keep = keep if slot.kv_key == aset.key else 0
        slot.ctx.set_adapters(aset.natives)
        if keep == 0:
            slot.ctx.clear()
        elif keep < len(slot.kv_tokens) and not slot.ctx.truncate(keep):
            slot.ctx.clear()
            keep = 0
        slot.kv_key, slot.kv_tokens = aset.key, list(tokens[:keep])
        return keep

    def _stash(self, slot: Slot) -> None:
        """Before a context leaves its adapter set, keep its KV state for a later return."""
        if self.snapshots is None or slot.kv_key is None or len(slot.kv_tokens) < self.snapshots.min_tokens:
            return
        self.snapshots.put(slot.kv_key, slot.kv_tokens, slot.ctx.save_state())
