"""Loaded adapters by name, checked against the base before llama.cpp sees them.

An adapter in use by a call is reference-counted: unloading it removes the name at
once (new calls get :class:`UnknownAdapterError`) and frees the native adapter when
the last call using it ends.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gguf import GGUFValueType, Keys

from .._validate import is_number
from ..families import adapter_archs
from ..lora.compat import adapter_problems, adapter_ranks, invocation_tokens
from ..errors import IncompatibleAdapterError, InvalidRequestError, UnknownAdapterError
from ..formats.gguf_copy import write_model_copy
from ..formats.gguf_file import GGUFInfo, read_gguf, require_adapter
from ..engine.native import NativeAdapter, NativeModel
from .activation import activation_starts
from .chat import template_kwargs_problem

@dataclass(frozen=True)
class AdapterInfo:
    """What is known of a loaded adapter."""

    name: str
    path: Path
    alpha: float
    ranks: list[int]
    targets: list[str]
    size_bytes: int
    scale: float  # default scale when a call names the adapter without one
    #: an activated LoRA's invocation sequence (it acts from its last occurrence on); () for a plain LoRA
    invocation_tokens: tuple[int, ...]
    #: the one identity of this load (llama.cpp's adapter, never reused): it keys the KV and contexts
    uid: int = field(repr=False)
    #: chat-template variables a call naming this adapter gets by default (the call's own win), as
    #: the adapter was trained: ``{"enable_thinking": False}`` for a Qwen3 adapter trained without thoughts
    template_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class _Entry:
    info: AdapterInfo
    native: NativeAdapter
    stamp: FileStamp | None = None  # the file as it was loaded
    refs: int = 0
    retired: bool = False


#: a file's (size, mtime in ns, inode): what tells that it was rewritten since
FileStamp = tuple[int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """``path``'s :data:`FileStamp`, or None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


#: what a call resolved: (name, uid, scale) sorted by name; zero scales dropped
SetKey = tuple[tuple[str, int, float], ...]


@dataclass(frozen=True)
class AdapterSet:
    """The adapters (and scales) one call runs with; also its KV-cache key."""

    key: SetKey
    #: the registry's adapters with their scales, in ``key``'s order (each held by the call)
    natives: tuple[tuple[NativeAdapter, float], ...]
    #: each adapter's aLoRA invocation tokens, in ``key``'s order (() for a plain LoRA)
    invocations: tuple[tuple[int, ...], ...] = ()
    #: their combination as one adapter at scale 1 (:mod:`.mixes`), or () to apply ``natives``
    applied: tuple[tuple[NativeAdapter, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.invocations:
            object.__setattr__(self, "invocations", ((),) * len(self.key))

    @property
    def scales(self) -> dict[str, float]:
        return {name: scale for name, _, scale in self.key}

    @property
    def run_with(self) -> tuple[tuple[NativeAdapter, float], ...]:
        """What llama.cpp applies for this set: the combination when there is one, else ``natives``."""
        return self.applied or self.natives

    def subset(self, names: set[str]) -> AdapterSet:
        """The set of those of its adapters named in ``names`` (its key is what a call naming
        only them resolves to, so their KV is shared)."""
        keep = [i for i, (n, _, _) in enumerate(self.key) if n in names]
        if len(keep) == len(self.key):
            return self  # with its combination, if it has one
        return AdapterSet(tuple(self.key[i] for i in keep), tuple(self.natives[i] for i in keep),
                          tuple(self.invocations[i] for i in keep))


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or any(c in name for c in "=:/\\ \t\n"):
        raise InvalidRequestError(f"adapter name {name!r}: use 1 to 128 characters without spaces, '=', ':' or slashes")
    return name


def check_scale(name: str, scale: object) -> float:
    if not is_number(scale):
        raise InvalidRequestError(f"adapter {name!r}: scale must be a finite number, got {scale!r}")
    return float(scale)


class AdapterRegistry:
    """Thread-safe map of adapter name to loaded adapter."""

    def __init__(self, model: NativeModel, base: GGUFInfo, detach: Callable[[NativeAdapter, int], None]) -> None:
        self._model = model
        self._base = base
        self._detach = detach  # removes an adapter (and its KV snapshots) from every context before it is freed
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._live: dict[int, _Entry] = {}  # by uid: loaded, or unloaded but still in use

    def load(self, name: str, path: str | Path, scale: float = 1.0,
             template_kwargs: Mapping[str, Any] | None = None) -> AdapterInfo:
        check_name(name)
        scale = check_scale(name, scale)
        problem = template_kwargs_problem(template_kwargs or {})
        if problem:
            raise InvalidRequestError(f"adapter {name!r}: {problem}", param="template_kwargs")
        stamp = file_stamp(Path(path))
        info = require_adapter(read_gguf(path))
        problems = adapter_problems(info, self._base, archs=adapter_archs(self._base.architecture))
        if problems:
            raise IncompatibleAdapterError(f"{info.path}: cannot be used with the base {self._base.path.name}", problems)
        native = self._native(info)
        entry = _Entry(replace(_describe(name, info, scale, native.serial),
                               template_kwargs=MappingProxyType(dict(template_kwargs or {}))), native, stamp)
        with self._lock:
            old = self._entries.get(name)
            self._entries[name] = entry
            self._live[entry.info.uid] = entry
        if old is not None:
            self._retire(old)
        return entry.info

    def unload(self, name: str) -> None:
        with self._lock:
            entry = self._entries.pop(name, None)
        if entry is None:
            raise self._unknown(name)
        self._retire(entry)

    def file_of(self, uid: int) -> tuple[Path, FileStamp | None] | None:
        """The file of the adapter loaded as ``uid``, with its stamp when it was loaded, while the
        adapter is loaded or in use; else None."""
        with self._lock:
            entry = self._live.get(uid)
            return None if entry is None else (entry.info.path, entry.stamp)

    def infos(self) -> dict[str, AdapterInfo]:
        with self._lock:
            return {n: e.info for n, e in sorted(self._entries.items())}

    def check(self, adapters: Mapping[str, float] | None, tokens: Sequence[int] | None = None) -> None:
        """Raise now for unknown names or bad scales (streams resolve adapters lazily), and, given
        the prompt's ``tokens``, for an aLoRA whose invocation sequence is not in them."""
        aset = self.acquire(adapters)
        try:
            if tokens is not None:
                activation_starts(aset, tokens)
        finally:
            self.release(aset)

    def template_kwargs(self, adapters: Mapping[str, float] | None, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """The chat-template variables of a call: its adapters' defaults (those it runs with a
        non-zero scale), then ``given`` (the call's own) over them. Adapters whose defaults
        disagree on a name the call leaves unset are an :class:`InvalidRequestError` naming them."""
        given = dict(given or {})
        chosen: dict[str, tuple[str, Any]] = {}
        clashes: list[str] = []
        with self._lock:
            entries = [(n, self._entries.get(n)) for n, s in (adapters or {}).items() if s != 0.0]
        for name, entry in sorted((n, e) for n, e in entries if e is not None):
            for key, value in entry.info.template_kwargs.items():
                if key in given:
                    continue
                if key in chosen and chosen[key][1] != value:
                    clashes.append(f"{key}: {chosen[key][0]} sets {chosen[key][1]!r}, {name} sets {value!r}")
                chosen.setdefault(key, (name, value))
        if clashes:
            raise InvalidRequestError("these adapters' default chat-template variables disagree; give the call's "
                                      "own template_kwargs (chat_template_kwargs) for them", clashes,
                                      param="template_kwargs")
        return {**{k: v for k, (_, v) in chosen.items()}, **given}

    def acquire(self, adapters: Mapping[str, float] | None) -> AdapterSet:
        """Resolve a call's adapters (names to scales); ``None`` or ``{}`` is the base alone."""
        if adapters is None:
            adapters = {}
        if not isinstance(adapters, Mapping):
            raise InvalidRequestError(f"adapters must be a mapping of name to scale, got {type(adapters).__name__}")
        with self._lock:
            chosen: list[tuple[str, _Entry, float]] = []
            for name, scale in adapters.items():
                entry = self._entries.get(name)
                if entry is None:
                    raise self._unknown(name)
                s = entry.info.scale if scale is None else check_scale(name, scale)
                if s != 0.0:  # 0 disables: the base's own graph, exactly
                    chosen.append((name, entry, s))
            chosen.sort(key=lambda c: c[0])
            for _, entry, _ in chosen:
                entry.refs += 1
        key = tuple((n, e.info.uid, s) for n, e, s in chosen)
        return AdapterSet(key, tuple((e.native, s) for _, e, s in chosen),
                          tuple(e.info.invocation_tokens for _, e, _ in chosen))

    def release(self, aset: AdapterSet) -> None:
        to_free: list[_Entry] = []
        with self._lock:
            for native, _ in aset.natives:
                entry = self._live.get(native.serial)  # the uid
                if entry is None:
                    continue
                entry.refs -= 1
                if entry.retired and entry.refs == 0:
                    to_free.append(entry)
        for entry in to_free:
            self._free(entry)

    def close(self) -> None:
        with self._lock:
            entries = list(self._live.values())
            self._entries.clear()
            self._live.clear()
        for e in entries:
            e.native.close()

    # -- internals ---------------------------------------------------------------
    def _native(self, info: GGUFInfo) -> NativeAdapter:
        """llama.cpp's adapter for ``info``. llama.cpp refuses an adapter whose arch differs from the
        model's even where the family accepts it (a llama adapter on a mistral3 base): it then loads
        a copy relabelled with the base's arch (llama.cpp copies the tensors in; the copy is removed)."""
        if info.architecture == self._base.architecture:
            return NativeAdapter(self._model, str(info.path))
        with tempfile.TemporaryDirectory(prefix="edge-lora-") as tmp:
            copy = Path(tmp) / info.path.name
            write_model_copy(info, copy, {}, {Keys.General.ARCHITECTURE: (self._base.architecture, GGUFValueType.STRING, None)})
            return NativeAdapter(self._model, str(copy))

    def _retire(self, entry: _Entry) -> None:
        with self._lock:
            entry.retired = True
            busy = entry.refs > 0
        if not busy:
            self._free(entry)

    def _free(self, entry: _Entry) -> None:
        self._detach(entry.native, entry.info.uid)
        with self._lock:
            self._live.pop(entry.info.uid, None)
        entry.native.close()

    def _unknown(self, name: object) -> UnknownAdapterError:
        loaded = ", ".join(sorted(self._entries)) or "none"
        return UnknownAdapterError(f"unknown adapter {name!r}; loaded adapters: {loaded}")


def _describe(name: str, info: GGUFInfo, scale: float, uid: int) -> AdapterInfo:
    ranks = adapter_ranks(info)
    return AdapterInfo(
        name=name,
        path=info.path,
        alpha=float(info.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0)),
        ranks=sorted(set(ranks.values())),
        targets=sorted(ranks),
        size_bytes=info.file_size,
        scale=scale,
        invocation_tokens=invocation_tokens(info),
        uid=uid,
    )
