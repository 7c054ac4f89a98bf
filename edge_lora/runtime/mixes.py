"""Mixes run as one adapter: a call's adapters combined exactly into one native adapter.

llama.cpp applies each adapter of a context on its own (``build_lora_mm``): per adapted weight
and adapter two products, a scale and an add (on the CPU one fused node, cmake/patches/0004), so
a mix of n adapters pays that n times. Their ``cat`` combination (:func:`~edge_lora.lora.pair.concat`:
the A factors stacked by rows, each adapter's scale ``s_i`` folded into its block of B) has the
change ``sum_i s_i B_i A_i`` exactly, at rank ``sum_i r_i``, and costs one: on gemma-3-270m
Q4_K_M two rank-16 adapters decode at about 0.91x the base one by one and 0.92x as one, on
a Llama-3.2-1B-shaped base 0.90x and 0.94x (``benchmarks/bench_runtime.py``, table 1b).

A set (its names, load ids and scales: :data:`~.registry.SetKey`) is combined in a background
thread after its first use; the calls until then apply the adapters one by one. The factors are
stored in f16 (f32 when a part is f32), each scale folded into its B relative to the largest
(:func:`combined_tensors`), so the outputs agree with the separate path within f16 rounding: of the
folded factors, and of B's input, which llama.cpp rounds to f16 or not by the product's shape
(its f16 matrix products take an f32 input as it is where llamafile's sgemm fits the rank). Combined adapters are kept within ``budget`` bytes, the
least recently used dropped first; a set whose combination would not fit, or cannot be stored
(a folded value beyond f16's range), keeps running its adapters one by one
(:meth:`MixCache.refused` says why). An aLoRA acts from its invocation on, so a set with one is
never combined. An adapter unloaded drops every combination holding it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, Keys

from ..engine.native import NativeAdapter, NativeModel, release_free_heap
from ..errors import EdgeLoraError
from ..formats.adapter_file import OutTensor, pair_tensors, write_adapter
from ..formats.gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, GGUFInfo, read_gguf, require_adapter
from ..formats.values import F16_MAX
from ..lora.adapter import read_tensor_f32
from ..lora.compat import lora_pairs
from ..lora.pair import LoraPair, concat, layout_for
from ..lora.scales import llama_cpp_scale
from .registry import AdapterSet, FileStamp, SetKey, file_stamp

log = logging.getLogger(__name__)


@dataclass
class _Mix:
    native: NativeAdapter
    scale: float  # the scale llama.cpp applies it at (its alpha is 0)
    size: int
    refs: int = 0
    retired: bool = False


@dataclass(frozen=True)
class MixPart:
    """One adapter of a set, read lazily: its factors stay in the (memory-mapped) file until
    its tensors are combined, so a combination's peak memory is its own size and one tensor."""

    info: GGUFInfo
    data: np.ndarray  # the file's bytes, memory-mapped
    user_scale: float

    @classmethod
    def open(cls, path: Path, user_scale: float) -> MixPart:
        return cls(require_adapter(read_gguf(path)), np.memmap(path, dtype=np.uint8, mode="r"), user_scale)

    @property
    def names(self) -> list[str]:
        """Its base tensor names, in file order."""
        return list(lora_pairs(self.info)[0])

    def scale(self, name: str) -> float:
        """The effective scale of its LoRA on ``name`` (llama.cpp's: user scale * alpha / rank)."""
        alpha = float(self.info.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0))
        return llama_cpp_scale(alpha, int(self.info.tensors[name + LORA_B_SUFFIX].shape[-1]), self.user_scale)

    def pair(self, name: str) -> LoraPair:
        a = read_tensor_f32(self.data, self.info.tensors[name + LORA_A_SUFFIX])
        b = read_tensor_f32(self.data, self.info.tensors[name + LORA_B_SUFFIX])
        return LoraPair(a, b, self.scale(name), layout_for(name, a.ndim))


def combined_tensors(parts: list[MixPart], dtype: type[np.floating]) -> tuple[list[OutTensor], float]:
    """The ``cat`` combination of ``parts`` (:func:`~edge_lora.lora.pair.concat` per base tensor),
    its factors in ``dtype``, and the scale to apply it at.

    The effective scale of largest magnitude, ``ref``, is left to llama.cpp (applied in f32, as
    on the separate path), and each adapter's block of B is multiplied by ``s_i / ref`` (at most
    1 in magnitude): the blocks whose scale is ``ref`` (all of them when the adapters share one
    scale) keep their stored values exactly, the others are rounded once more in f16. Raises
    :class:`EdgeLoraError` when a value folded in goes beyond f16's range."""
    held = [set(p.names) for p in parts]
    names: dict[str, None] = {}  # first-appearance order
    for part in parts:
        names.update(dict.fromkeys(part.names))
    ref = max((p.scale(n) for p, h in zip(parts, held) for n in h), key=abs)
    out: list[OutTensor] = []
    for name in names:
        pairs = [p.pair(name) for p, h in zip(parts, held) if name in h]
        pair = concat([replace(q, scale=q.scale / ref) for q in pairs])
        if dtype == np.float16 and float(np.abs(pair.b).max(initial=0.0)) > F16_MAX:
            raise EdgeLoraError(f"{name}: a factor goes beyond f16's range once the scales are folded in")
        out += [OutTensor(t.name, t.data.astype(dtype)) for t in pair_tensors({name: pair})]
    return out, ref


class MixCache:
    """Combined adapters by set, built in the background, within ``budget`` bytes (0: none).

    ``file_of(uid)`` is a loaded adapter's file and its stamp at load (None once the adapter is
    gone: :meth:`AdapterRegistry.file_of`); ``detach(native, uid)``
    takes a native adapter off every idle context before it is freed (the scheduler's)."""

    def __init__(self, model: NativeModel, arch: str, budget: int,
                 file_of: Callable[[int], tuple[Path, FileStamp | None] | None],
                 detach: Callable[[NativeAdapter, int], None]) -> None:
        self._model, self._arch, self.budget = model, arch, budget
        self._file_of, self._detach = file_of, detach
        #: calls that ran a combination (as opposed to their adapters one by one)
        self.hits = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._active = 0  # builds under way, background or not: close() waits for them
        self._mixes: OrderedDict[SetKey, _Mix] = OrderedDict()  # least recently used first
        self._live: dict[int, _Mix] = {}  # by native serial: cached, or dropped but still in use
        self._building: set[SetKey] = set()
        self._refused: dict[SetKey, str] = {}
        self._gone: set[int] = set()  # uids of unloaded adapters: a build finishing late is dropped
        self._closed = False

    # -- calls -------------------------------------------------------------------------
    def use(self, aset: AdapterSet) -> AdapterSet:
        """``aset`` to run a call with: its combination when one is ready (held until
        :meth:`release`), else ``aset`` itself, a build started for next time."""
        if not self.eligible(aset):
            return aset
        with self._lock:
            mix = self._mixes.get(aset.key)
            if mix is not None:
                self._mixes.move_to_end(aset.key)
                mix.refs += 1
                self.hits += 1
                return replace(aset, applied=((mix.native, mix.scale),))
            start = self._begin(aset.key)
        if start:
            threading.Thread(target=self._build, args=(aset.key,), name="edge-lora-mix", daemon=True).start()
        return aset

    def release(self, aset: AdapterSet) -> None:
        """End a call :meth:`use` gave ``aset`` to."""
        if not aset.applied:
            return
        with self._lock:
            mix = self._live.get(aset.applied[0][0].serial)
            if mix is None:
                return
            mix.refs -= 1
            free = mix.retired and mix.refs == 0
        if free:
            self._free(mix)

    def eligible(self, aset: AdapterSet) -> bool:
        """Whether ``aset`` can run as one adapter: two or more plain LoRAs, and room for them."""
        return self.budget > 0 and len(aset.key) >= 2 and not any(aset.invocations)

    def build(self, aset: AdapterSet) -> bool:
        """Combine ``aset`` now, in this thread (or wait for the build under way); True when it
        runs as one adapter from now on."""
        if not self.eligible(aset):
            return False
        with self._lock:
            start = aset.key not in self._mixes and self._begin(aset.key)
        if start:
            self._build(aset.key)
        with self._cond:  # a build of this set under way in another thread, background or not
            self._cond.wait_for(lambda: aset.key not in self._building)
            return aset.key in self._mixes

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the builds under way."""
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0, timeout)

    # -- state -------------------------------------------------------------------------
    @property
    def bytes_used(self) -> int:
        """The combinations' sizes: those kept, and those dropped but still used by a call."""
        with self._lock:
            return sum(m.size for m in self._live.values())

    def combined(self) -> list[SetKey]:
        """The sets running as one adapter now, least recently used first."""
        with self._lock:
            return list(self._mixes)

    def refused(self) -> dict[SetKey, str]:
        """Sets that keep their adapters one by one, with the reason."""
        with self._lock:
            return dict(self._refused)

    def drop_adapter(self, uid: int) -> None:
        """An adapter (load id ``uid``) is being freed: drop every combination holding it."""
        with self._lock:
            self._gone.add(uid)
            keys = [k for k in self._mixes if any(u == uid for _, u, _ in k)]
            self._refused = {k: v for k, v in self._refused.items() if all(u != uid for _, u, _ in k)}
        for key in keys:
            self._drop(key)

    def close(self) -> None:
        """Stop building and free every combination (the contexts are closed first)."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0)
            mixes = list(self._live.values())
            self._mixes.clear()
            self._live.clear()
        for mix in mixes:
            mix.native.close()

    # -- internals ---------------------------------------------------------------------
    def _begin(self, key: SetKey) -> bool:
        """Under the lock: claim ``key``'s build (False when built, refused, under way or closed)."""
        if key in self._building or key in self._refused or self._closed:
            return False
        self._building.add(key)
        self._active += 1
        return True

    def _build(self, key: SetKey) -> None:
        try:
            self._install(key)
            release_free_heap()  # the transient of reading, stacking and writing the factors
        finally:
            with self._cond:
                self._building.discard(key)
                self._active -= 1
                self._cond.notify_all()

    def _install(self, key: SetKey) -> None:
        try:
            native, scale, size = self._combine(key)
        except Exception as exc:  # any failure: the set runs one by one, never a build stuck 'under way'
            with self._lock:
                if not any(u in self._gone for _, u, _ in key):
                    self._refused[key] = f"{type(exc).__name__}: {exc}"
            log.info("adapters %s run one by one: %s", [n for n, _, _ in key], exc)
            return
        with self._lock:
            stale = self._closed or any(u in self._gone for _, u, _ in key)
            if not stale:
                mix = _Mix(native, scale, size)
                self._mixes[key] = mix
                self._live[native.serial] = mix
                while sum(m.size for m in self._mixes.values()) > self.budget and len(self._mixes) > 1:
                    old = next(iter(self._mixes))
                    self._mixes[old].retired = True
                    self._mixes.pop(old)
        if stale:
            native.close()
        self._free_retired()

    def _combine(self, key: SetKey) -> tuple[NativeAdapter, float, int]:
        """The ``cat`` combination of ``key``'s adapters (each at its scale, :func:`combined_tensors`)
        loaded natively, the scale to apply it at, and its size; raises :class:`EdgeLoraError` when
        it cannot be built (too large, an overflow, a file gone)."""
        files = [self._file_of(uid) for _, uid, _ in key]
        if any(f is None for f in files):
            raise EdgeLoraError("an adapter of the set was unloaded")
        paths = [f[0] for f in files]  # type: ignore[index]

        def check_unchanged() -> None:  # llama.cpp holds the adapters as they were loaded
            changed = [p.name for p, stamp in files if stamp is None or file_stamp(p) != stamp]  # type: ignore[misc]
            if changed:
                raise EdgeLoraError(f"{', '.join(changed)} changed on disk since it was loaded: load it again to "
                                    "run the new file")

        check_unchanged()
        infos = [require_adapter(read_gguf(p)) for p in paths]
        f32 = any(t.type_name == GGMLQuantizationType.F32.name for i in infos for t in i.tensors.values())
        size = sum(int(np.prod(t.shape)) for i in infos for t in i.tensors.values()) * (4 if f32 else 2)
        if size > self.budget:
            raise EdgeLoraError(f"their combination ({size / 2**20:.1f} MiB) is larger than the mix cache "
                                f"({self.budget / 2**20:.1f} MiB: mix_cache_mb)")
        parts = [MixPart(i, np.memmap(p, dtype=np.uint8, mode="r"), s) for (_, _, s), p, i in zip(key, paths, infos)]
        tensors, ref = combined_tensors(parts, np.float32 if f32 else np.float16)
        del parts  # the files' mappings
        check_unchanged()  # what was read is what llama.cpp holds
        with tempfile.TemporaryDirectory(prefix="edge-lora-mix-", ignore_cleanup_errors=True) as tmp:
            path = Path(tmp) / "mix.gguf"
            write_adapter(path, self._arch, 0.0, tensors, "f32" if f32 else "f16", {}, progress=False)
            size = path.stat().st_size
            return NativeAdapter(self._model, str(path)), ref, size  # llama.cpp copies the tensors in

    def _drop(self, key: SetKey) -> None:
        with self._lock:
            mix = self._mixes.pop(key, None)
            if mix is None:
                return
            mix.retired = True
        self._free_retired()

    def _free_retired(self) -> None:
        with self._lock:
            idle = [m for m in self._live.values() if m.retired and m.refs == 0]
        for mix in idle:
            self._free(mix)

    def _free(self, mix: _Mix) -> None:
        with self._lock:
            if self._live.pop(mix.native.serial, None) is None:
                return  # freed by another thread
        self._detach(mix.native, mix.native.serial)
        mix.native.close()
