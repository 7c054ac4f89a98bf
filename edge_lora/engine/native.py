"""The one module that calls llama.cpp and ggml (through llama-cpp-python's low-level bindings).

Everything else talks to these small wrappers. Native resources are freed explicitly
(``close``) and never twice. Callers validate files in Python first
(:mod:`edge_lora.formats.gguf_file`, :mod:`edge_lora.lora.compat`): llama.cpp aborts the process on
some malformed inputs instead of returning an error.

The libraries are the ones llama-cpp-python loads (``<site-packages>/llama_cpp/lib`` or
``$LLAMA_CPP_LIB_PATH``). With edge-lora's portable build, ggml's backends (the CPU
variants, CUDA...) are separate modules in that folder, loaded from there by
:func:`backend_init` before anything else runs (ggml would otherwise look beside the
Python executable and in the current directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import llama_cpp as ll
import llama_cpp.llama_cpp as _ll_lib
import numpy as np

from ..errors import CancelledError, ContextOverflowError, GGUFFileError, InvalidRequestError, NativeError

log = logging.getLogger(__name__)

# a native abort (GGML_ASSERT) must not print a debugger backtrace into the user's terminal
os.environ.setdefault("GGML_NO_BACKTRACE", "1")

_init_lock = threading.Lock()
_initialized = False

KV_TYPES = {"f16": ll.GGML_TYPE_F16, "f32": ll.GGML_TYPE_F32, "q8_0": ll.GGML_TYPE_Q8_0}


_capture = threading.local()


@ll.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 cont
    msg = text.decode("utf-8", errors="replace").rstrip()
    if msg:
        log.log(logging.ERROR if level == 4 else logging.WARNING if level == 3 else logging.DEBUG, msg)
        lines = getattr(_capture, "lines", None)
        if lines is not None and level == 4:
            lines.append(msg)


@contextlib.contextmanager
def logged_errors() -> Iterator[list[str]]:
    """The error lines llama.cpp logs from this thread inside the block (its reason for a refusal)."""
    prev = getattr(_capture, "lines", None)
    _capture.lines = lines = []
    try:
        yield lines
    finally:
        _capture.lines = prev


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """The lines native code writes to the process's stderr (fd 2) inside the block, kept from
    the terminal: llama.cpp's grammar parser reports its reason there (``fprintf`` in
    ``llama_grammar_parser::parse``), not through the log callback. Keep the block short: other
    threads' stderr output in that window is captured too (and discarded)."""
    import tempfile

    with _stderr_lock, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        lines: list[str] = []
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", errors="replace").splitlines())


def _reason(lines: list[str]) -> str:
    """llama.cpp's own words for a failure: its last error lines, or a pointer to the log."""
    return "; ".join(lines[-2:]) if lines else "see the log for its reason"


def lib_dir() -> Path:
    """The folder llama-cpp-python loaded ``libllama`` from (its backends live beside it)."""
    return Path(_ll_lib._base_path)


def _lib_file(stem: str) -> Path:
    if sys.platform == "win32":
        return lib_dir() / f"{stem}.dll"
    if sys.platform == "darwin" and not (lib_dir() / f"lib{stem}.so").exists():
        return lib_dir() / f"lib{stem}.dylib"
    return lib_dir() / f"lib{stem}.so"


class _Ggml:
    """ctypes declarations of the few ggml functions the bindings do not expose."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(str(_lib_file("ggml")))  # already loaded by libllama: same handle
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        decls = {
            "ggml_backend_load_all_from_path": ([cp], None),
            "ggml_backend_reg_count": ([], sz),
            "ggml_backend_reg_get": ([sz], vp),
            "ggml_backend_reg_name": ([vp], cp),
            "ggml_backend_dev_count": ([], sz),
            "ggml_backend_dev_get": ([sz], vp),
            "ggml_backend_dev_name": ([vp], cp),
            "ggml_backend_dev_description": ([vp], cp),
            "ggml_backend_dev_type": ([vp], ctypes.c_int),
            "ggml_backend_dev_memory": ([vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
            "ggml_version": ([], cp),
            "ggml_commit": ([], cp),
            "ggml_row_size": ([ctypes.c_int, ctypes.c_int64], sz),
            "ggml_quantize_requires_imatrix": ([ctypes.c_int], ctypes.c_bool),
            "ggml_op_name": ([ctypes.c_int], cp),
            "ggml_nelements": ([vp], ctypes.c_int64),
            "ggml_is_contiguous": ([vp], ctypes.c_bool),
            "ggml_tensor_overhead": ([], sz),
            "ggml_backend_tensor_get": ([vp, vp, sz, sz], None),
            "ggml_quantize_chunk": (
                [ctypes.c_int, ctypes.POINTER(ctypes.c_float), vp, ctypes.c_int64, ctypes.c_int64,
                 ctypes.c_int64, ctypes.POINTER(ctypes.c_float)],
                sz,
            ),
        }
        for name, (args, res) in decls.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
            setattr(self, name, fn)


_ggml_lib: _Ggml | None = None


def _ggml() -> _Ggml:
    global _ggml_lib
    if _ggml_lib is None:
        _ggml_lib = _Ggml()
    return _ggml_lib


def backend_init() -> None:
    """Initialise llama.cpp once: route its log into Python's logging (off stderr) and, for a
    build with dynamically loaded backends, load them from :func:`lib_dir`.

    Raises :class:`NativeError` when no backend can be loaded (a broken install)."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        ll.llama_log_set(_log_callback, ctypes.c_void_p(0))
        g = _ggml()
        if g.ggml_backend_reg_count() == 0:  # GGML_BACKEND_DL build: nothing is linked in
            g.ggml_backend_load_all_from_path(str(lib_dir()).encode())
            if g.ggml_backend_reg_count() == 0:
                raise NativeError(
                    f"no ggml backend could be loaded from {lib_dir()} (no usable libggml-cpu* there); "
                    "reinstall the engine (README, Install) and run `edge-lora doctor`"
                )
        ll.llama_backend_init()
        _initialized = True


@dataclass(frozen=True)
class Device:
    """A device ggml sees: ``kind`` is cpu, gpu, igpu or accel; memory in bytes (0 when unknown)."""

    backend: str
    name: str
    description: str
    kind: str
    memory_free: int
    memory_total: int


_DEV_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def devices() -> list[Device]:
    """Every device of every loaded backend."""
    backend_init()
    g = _ggml()
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        name = (g.ggml_backend_dev_name(dev) or b"").decode(errors="replace")
        out.append(Device(
            backend=name.rstrip("0123456789") or name,
            name=name,
            description=(g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            kind=_DEV_KINDS.get(g.ggml_backend_dev_type(dev), "other"),
            memory_free=int(free.value),
            memory_total=int(total.value),
        ))
    return out


def backends() -> list[str]:
    """Names of the loaded ggml backends (registries), e.g. ``["CPU"]`` or ``["CUDA", "CPU"]``."""
    backend_init()
    g = _ggml()
    return [(g.ggml_backend_reg_name(g.ggml_backend_reg_get(i)) or b"").decode() for i in range(g.ggml_backend_reg_count())]


def system_info() -> dict[str, str]:
    """Versions and what llama.cpp reports of itself: ``llama_print_system_info`` (the CPU
    backend's compiled features), ggml's version, GPU offload support."""
    backend_init()
    g = _ggml()
    return {
        "ggml_version": (g.ggml_version() or b"").decode(),
        "ggml_commit": (g.ggml_commit() or b"").decode(),
        "system_info": ll.llama_print_system_info().decode(errors="replace").strip(),
        "gpu_offload": "yes" if ll.llama_supports_gpu_offload() else "no",
    }


def quantize_rows(data: np.ndarray, ggml_type: int) -> bytes:
    """Quantize ``data`` (f32, shape ``[n_rows, n_per_row]``) to ``ggml_type`` with ggml's own
    quantizer (``ggml_quantize_chunk``); returns the rows' bytes, as stored in GGUF.

    Raises :class:`InvalidRequestError` when ``n_per_row`` is not a multiple of the type's
    block size or the type needs an importance matrix."""
    g = _ggml()
    rows = np.ascontiguousarray(data, dtype=np.float32)
    if rows.ndim != 2:
        raise InvalidRequestError(f"quantize_rows needs a 2-D array, got shape {rows.shape}")
    n_rows, n_per_row = rows.shape
    if g.ggml_quantize_requires_imatrix(ggml_type):
        raise InvalidRequestError(f"ggml type {ggml_type} needs an importance matrix")
    row_size = g.ggml_row_size(ggml_type, n_per_row)
    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    if n_per_row % block:
        raise InvalidRequestError(f"rows of {n_per_row} values do not fill {gguf.GGMLQuantizationType(ggml_type).name} blocks of {block}")
    out = ctypes.create_string_buffer(row_size * n_rows)
    src = rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    n = g.ggml_quantize_chunk(ggml_type, src, out, 0, n_rows, n_per_row, None)
    return out.raw[:n]


class AdapterSetLock:
    """Orders adapter init/free against every context's use of the model.

    ``llama_adapter_lora_init`` and ``llama_adapter_lora_free`` insert into and erase from the
    model's adapter set (``model.loras``, a ``std::unordered_set``), which llama.cpp iterates from
    any context sizing its graph (``llama_context::graph_max_nodes``, called when a context is
    created, its adapters change or a batch is evaluated). Contexts hold it shared around those
    calls; adapter init/free hold it exclusive. A waiting writer stops new readers, so a stream of
    decodes cannot starve a load; a thread that holds it shared must not ask for it exclusive."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class NativeModel:
    """A loaded base model (weights memory-mapped) and its vocabulary."""

    def __init__(self, path: str, *, n_gpu_layers: int = 0, on_progress: Callable[[float], object] | None = None) -> None:
        """Load ``path``. ``on_progress(fraction)`` is called from this thread as llama.cpp loads
        (0.0 to 1.0); returning False cancels (:class:`CancelledError`); its exceptions propagate."""
        backend_init()
        self.adapter_lock = AdapterSetLock()
        params = ll.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.load_mode = ll.LLAMA_LOAD_MODE_MMAP  # keep mmap on: the base is shared, not copied
        failure: list[BaseException] = []
        cancelled = False
        if on_progress is not None:
            def _progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
                nonlocal cancelled
                try:
                    cancelled = on_progress(float(fraction)) is False
                except BaseException as exc:  # noqa: BLE001 - re-raised below, outside native code
                    failure.append(exc)
                return not (cancelled or failure)

            callback = ll.llama_progress_callback(_progress)  # referenced until the load returns
            params.progress_callback = callback
            params.progress_callback_user_data = None
        with logged_errors() as errors:
            ptr = ll.llama_model_load_from_file(path.encode(), params)
        if failure:
            if ptr:
                ll.llama_model_free(ptr)
            raise failure[0]
        if cancelled:
            if ptr:
                ll.llama_model_free(ptr)
            raise CancelledError(f"{path}: loading was cancelled by the progress callback")
        if not ptr:
            raise GGUFFileError(f"{path}: llama.cpp could not load this model ({_reason(errors)})")
        self.ptr = ptr
        self.vocab = ll.llama_model_get_vocab(ptr)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(ll.llama_model_n_ctx_train(ptr))
        self.bos = int(ll.llama_vocab_bos(self.vocab))
        self.eos = int(ll.llama_vocab_eos(self.vocab))
        self.add_bos = bool(ll.llama_vocab_get_add_bos(self.vocab))

    def close(self) -> None:
        if self.ptr:
            ll.llama_model_free(self.ptr)
            self.ptr = None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ll.llama_token * cap)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (ll.llama_token * cap)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise NativeError(f"tokenization failed ({n})")
        return list(buf[:n])

    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self.vocab, token))

    @property
    def can_rewind(self) -> bool:
        """Whether a context's memory can drop its last tokens (attention KV): a recurrent or
        hybrid model's state cannot be cut back to an earlier position."""
        return not (ll.llama_model_is_recurrent(self.ptr) or ll.llama_model_is_hybrid(self.ptr))

    def token_text(self, token: int) -> str:
        raw = ll.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_special_token(self, text: str) -> bool:
        """Whether ``text`` is one control token of this vocabulary."""
        ids = self.tokenize(text, add_special=False, parse_special=True)
        return len(ids) == 1 and self.token_text(ids[0]) == text

    def chat_template(self) -> str | None:
        raw = ll.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None


def vocab_summary(model: NativeModel) -> dict[str, int | bool]:
    """What llama.cpp compares to let one model draft for another: the tokenizer ``type``
    (llama_vocab_type), ``bos``/``eos`` ids and whether they are added (``add_bos``/``add_eos``)."""
    v = model.vocab
    return {"type": int(ll.llama_vocab_type(v)), "bos": int(ll.llama_vocab_bos(v)), "eos": int(ll.llama_vocab_eos(v)),
            "add_bos": bool(ll.llama_vocab_get_add_bos(v)), "add_eos": bool(ll.llama_vocab_get_add_eos(v))}


_serials = itertools.count(1)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``; elsewhere
    nothing). glibc keeps what a thread freed in that thread's arena for reuse, so after
    building a large transient (a mix's combination: its factors read, stacked and written,
    several hundred MiB for eight adapters on a 1B base) the process would keep that much
    resident. Linux with glibc only; a no-op on macOS, Windows and musl."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)



class NativeAdapter:
    """A LoRA adapter loaded onto a model (freed before the model)."""

    def __init__(self, model: NativeModel, path: str) -> None:
        with model.adapter_lock.exclusive(), logged_errors() as errors:  # inserts into the model's adapter set
            ptr = ll.llama_adapter_lora_init(model.ptr, path.encode())
        if not ptr:
            raise GGUFFileError(f"{path}: llama.cpp refused this adapter ({_reason(errors)})")
        self.ptr = ptr
        self.model = model
        self.serial = next(_serials)  # never reused, unlike id() or a freed pointer

    def close(self) -> None:
        if self.ptr:
            with self.model.adapter_lock.exclusive():  # erases from the model's adapter set
                ll.llama_adapter_lora_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int
    n_batch: int
    n_threads: int
    kv_type: str = "f16"
    #: llama.cpp's op offload: large batches' products go to the GPU even for layers kept on the CPU
    op_offload: bool = True
    #: gathers input statistics while the graph is evaluated (slower: llama.cpp syncs at each product)
    input_stats: InputStats | None = None
    #: sequences in the context (llama.cpp's ``n_seq_max``), each with its own KV of ``n_ctx`` tokens
    n_seq: int = 1


class _GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h of the pinned llama.cpp); its size is checked
    against ``ggml_tensor_overhead()`` before use."""

    _fields_ = [
        ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8),
    ]


#: sizeof(struct ggml_object) in the same header: ggml_tensor_overhead() = object + tensor
_GGML_OBJECT_SIZE = 32


class InputStats:
    """Second moments ``H = sum_t x_t x_t^T`` (in, in) of the inputs ``x`` that reach each chosen
    weight's matrix product, gathered through llama.cpp's graph callback (``cb_eval``), as
    llama.cpp's ``imatrix`` tool gathers their diagonal.

    The callback only copies the inputs (llama.cpp's worker threads spin meanwhile); call
    :meth:`flush` after each decode to fold them into ``h``. Weights fed the same input one
    after another (Q, K, V) share one ``h`` array. ``h[name]`` is float64."""

    def __init__(self, weights: Sequence[str]) -> None:
        g = _ggml()
        if g.ggml_tensor_overhead() != _GGML_OBJECT_SIZE + ctypes.sizeof(_GgmlTensor):
            raise NativeError("this ggml's struct ggml_tensor differs from edge-lora's declaration; "
                              "input statistics need the pinned llama-cpp-python")
        self._g = g
        self._wanted = {w.encode(): w for w in weights}
        self.h: dict[str, np.ndarray] = {}
        self.skipped: set[str] = set()
        self._pending: list[tuple[list[str], np.ndarray]] = []
        self._failure: BaseException | None = None
        self.callback = ll.ggml_backend_sched_eval_callback(self._guarded)

    def _guarded(self, t_ptr: int, ask: bool, user_data: ctypes.c_void_p) -> bool:
        # an exception cannot cross the native frames: keep it, stop the graph (False), and
        # raise it from flush(), after llama_decode has returned
        if self._failure is not None:
            return False
        try:
            return self._on_tensor(t_ptr, ask, user_data)
        except BaseException as exc:  # noqa: BLE001 - re-raised by flush()
            self._failure = exc
            return False

    def _on_tensor(self, t_ptr: int, ask: bool, _user_data: ctypes.c_void_p) -> bool:
        t = _GgmlTensor.from_address(t_ptr)
        if self._g.ggml_op_name(t.op) != b"MUL_MAT" or not t.src[0] or not t.src[1]:
            return not ask
        name = self._wanted.get(_GgmlTensor.from_address(t.src[0]).name)
        if name is None:
            return not ask
        if ask:
            return True
        x_ptr = t.src[1]
        x_t = _GgmlTensor.from_address(x_ptr)
        if x_t.type != ll.GGML_TYPE_F32 or not self._g.ggml_is_contiguous(x_ptr):
            self.skipped.add(name)
            return True
        n = int(self._g.ggml_nelements(x_ptr))
        x = np.empty(n, dtype=np.float32)
        self._g.ggml_backend_tensor_get(x_ptr, x.ctypes.data, 0, n * 4)
        x = x.reshape(-1, int(x_t.ne[0]))
        last = self._pending[-1] if self._pending else None
        if last is not None and last[1].shape == x.shape and np.array_equal(last[1], x):
            last[0].append(name)
        else:
            self._pending.append(([name], x))
        return True

    def flush(self) -> None:
        """Fold the inputs copied since the last flush into ``h``; re-raise an exception
        (KeyboardInterrupt, MemoryError...) the callback caught during the decode."""
        if self._failure is not None:
            exc, self._failure = self._failure, None
            self._pending.clear()
            raise exc
        for names, x in self._pending:
            inc = (x.T @ x).astype(np.float64)
            shared = self.h.get(names[0])
            if shared is not None and all(self.h.get(n) is shared for n in names):
                shared += inc
                continue
            for n in names:  # first sighting: one shared array (or, if the grouping changed, one per name)
                self.h[n] = self.h[n] + inc if n in self.h else inc
        self._pending.clear()


def adapters_key(adapters: Sequence[tuple[NativeAdapter, float]]) -> tuple[tuple[int, float], ...]:
    """What identifies an applied adapter list: each adapter's load serial and scale, in order."""
    return tuple((a.serial, float(s)) for a, s in adapters)


class NativeContext:
    """One llama context over a shared model, with ``n_seq`` sequences, each its own KV of up to
    ``n_ctx`` tokens (several: in llama.cpp's unified KV buffer of ``n_seq * n_ctx`` cells). Each
    method is one step under the context's lock: threads serving different sequences may call it
    at once."""

    def __init__(self, model: NativeModel, p: ContextParams) -> None:
        params = ll.llama_context_default_params()
        params.n_seq_max = p.n_seq
        params.n_ctx = p.n_ctx * p.n_seq
        # several sequences share one KV buffer (llama.cpp's unified KV): a batch may then hold any
        # of them in one ubatch; with a stream per sequence llama.cpp splits a batch wherever its
        # sequence ids are not consecutive (llama_batch_allocr::split_equal), a pass per split
        params.kv_unified = p.n_seq > 1
        params.n_batch = p.n_batch
        params.n_ubatch = min(p.n_batch, 512)
        params.n_threads = p.n_threads
        params.n_threads_batch = p.n_threads
        params.type_k = params.type_v = KV_TYPES[p.kv_type]
        params.swa_full = True  # keep the whole history so any prefix can be reused exactly
        if p.kv_type == "f32":  # exact evaluation: the flash-attention CPU path accumulates in f16
            params.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        params.op_offload = p.op_offload
        if p.input_stats is not None:
            params.cb_eval = p.input_stats.callback
            params.cb_eval_user_data = None
        with model.adapter_lock.shared():  # sizes the graph over the model's adapters
            ptr = ll.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise NativeError("llama.cpp could not create a context (out of memory for this n_ctx?)")
        self.ptr = ptr
        self.model = model
        self.n_seq = p.n_seq
        # per sequence (one sequence: what llama.cpp made of it; several: each gets its n_ctx of the
        # buffer, the bound checked here)
        self.n_ctx = int(ll.llama_n_ctx_seq(ptr)) if p.n_seq == 1 else min(p.n_ctx, int(ll.llama_n_ctx(ptr)) // p.n_seq)
        self.n_batch = int(ll.llama_n_batch(ptr))  # llama.cpp caps it at the requested n_ctx
        self.mem = ll.llama_get_memory(ptr)
        self.n_threads = p.n_threads
        self.kv_type = p.kv_type
        self._lock = threading.RLock()
        self._adapters: tuple[tuple[int, float], ...] = ()
        self._abort_check: Callable[[], bool] | None = None
        self._abort_cb = ll.ggml_abort_callback(lambda _data: bool(self._abort_check and self._abort_check()))
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)  # reused by every decode
        self._decoded = 0  # decodes run (the output buffer exists after the first)
        # a context of several sequences is decoded from the threads of its several calls: its
        # decodes run on one thread of its own, so that ggml's OpenMP keeps one team of workers
        # (a team per calling thread, each spinning after its work, takes the cores from the next)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="llama-decode") if p.n_seq > 1 else None

    def close(self) -> None:
        with self._lock:
            if self.ptr:
                if self._worker is not None:
                    self._worker.shutdown()
                ll.llama_batch_free(self._batch)
                ll.llama_free(self.ptr)
                self.ptr = None
                self._adapters = ()  # holds none: a late Scheduler.detach leaves a closed context alone

    # -- adapters --------------------------------------------------------------
    def set_adapters(self, adapters: Sequence[tuple[NativeAdapter, float]]) -> None:
        """Apply ``adapters`` (with their scales) to the context's next decodes (every sequence's).
        llama.cpp re-plans the graph after a change (a few ms): unchanged sets cost nothing."""
        key = adapters_key(adapters)
        with self._lock:
            if key == self._adapters:
                return
            n = len(adapters)
            arr = (ll.llama_adapter_lora_p_ctypes * max(n, 1))(*[a.ptr for a, _ in adapters])
            scales = (ctypes.c_float * max(n, 1))(*[s for _, s in adapters])
            with self.model.adapter_lock.shared():
                rc = ll.llama_set_adapters_lora(self.ptr, arr if n else None, n, scales if n else None)
            if rc != 0:
                raise NativeError(f"llama_set_adapters_lora failed ({rc})")
            self._adapters = key

    @property
    def applied(self) -> tuple[tuple[int, float], ...]:
        """The :func:`adapters_key` of the adapters applied now."""
        return self._adapters

    def holds_adapter(self, adapter: NativeAdapter) -> bool:
        return any(serial == adapter.serial for serial, _ in self._adapters)

    # -- KV memory (per sequence) ------------------------------------------------
    def clear(self, seq: int = 0) -> None:
        with self._lock:
            if self.n_seq == 1:
                ll.llama_memory_clear(self.mem, True)
            else:
                ll.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def truncate(self, n_keep: int, seq: int = 0) -> bool:
        """Drop ``seq``'s KV positions >= n_keep; False when this memory cannot do a partial removal."""
        with self._lock:
            return bool(ll.llama_memory_seq_rm(self.mem, seq, n_keep, -1))

    def save_state(self, seq: int = 0) -> bytes:
        with self._lock:
            size = ll.llama_state_seq_get_size(self.ptr, seq)
            buf = (ctypes.c_uint8 * size)()
            n = ll.llama_state_seq_get_data(self.ptr, buf, size, seq)
            return ctypes.string_at(buf, n)  # one memcpy (slicing a ctypes array builds a list of ints)

    def load_state(self, data: bytes, seq: int = 0) -> bool:
        """Load a state saved from any sequence (of a context of this model) into ``seq``."""
        with self._lock:
            self.clear(seq)
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            return ll.llama_state_seq_set_data(self.ptr, buf, len(data), seq) == len(data)

    def abort_when(self, check: Callable[[], bool] | None) -> None:
        """While set, llama.cpp polls ``check`` between graph nodes of a decode and aborts it
        when True (:meth:`decode` then raises :class:`CancelledError`). Costs a Python call per
        node: set it around long prompt evaluations only (:meth:`decode`'s ``abort`` sets it for
        each chunk, under the lock: in a context of several sequences it applies to every decode
        while set)."""
        self._abort_check = check
        ll.llama_set_abort_callback(self.ptr, self._abort_cb if check else ll.ggml_abort_callback(), None)

    # -- evaluation --------------------------------------------------------------
    def decode(self, tokens: Sequence[int], start_pos: int, *, seq: int = 0,
               adapters: Sequence[tuple[NativeAdapter, float]] | None = None, all_logits: bool = False,
               all_rows: bool = False, copy_last: bool = False,
               abort: Callable[[], bool] | None = None) -> np.ndarray | None:
        """Evaluate ``tokens`` at positions ``start_pos...`` of sequence ``seq``, under ``adapters``
        when given (set first, in the same step). With ``all_logits``, return every token's logits
        ``[len(tokens), n_vocab]``; else only the last token's are computed, left in the context for
        the sampler, and returned as a copy ``[n_vocab]`` with ``copy_last`` (another sequence's
        decode replaces them). ``all_rows`` computes every token through the last layer without
        returning the logits (llama.cpp otherwise drops the rows whose output is not wanted
        before the last layer: input statistics need them all). ``abort`` is polled between graph
        nodes (:meth:`abort_when`): :class:`CancelledError` when it returns True. In a context of
        several sequences the batches of ``n_batch`` tokens are steps of their own, the lock let go
        between them (:mod:`~edge_lora.runtime.batch` evaluates prompts in smaller chunks)."""
        n_total = len(tokens)
        if start_pos + n_total > self.n_ctx:
            raise ContextOverflowError(
                f"{start_pos + n_total} tokens do not fit the context of {self.n_ctx}", needed=start_pos + n_total, n_ctx=self.n_ctx
            )
        n_vocab = self.model.n_vocab
        out = np.empty((n_total, n_vocab), dtype=np.float32) if all_logits else None
        step = self.n_batch
        last = None
        for off in range(0, n_total, step):
            chunk = tokens[off : off + step]
            with self._lock:
                if adapters is not None:
                    self.set_adapters(adapters)
                batch = self._batch
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i] = tok
                    batch.pos[i] = start_pos + off + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = all_logits or all_rows or (off + i == n_total - 1)
                if abort is not None:
                    self.abort_when(abort)
                try:
                    self._run_batch()
                finally:
                    if abort is not None:
                        self.abort_when(None)
                if out is not None:
                    for i in range(len(chunk)):
                        out[off + i] = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ptr, i), (n_vocab,))
                elif copy_last and off + step >= n_total:
                    last = self.logits_ith(-1).copy()
        return out if out is not None else last

    def decode_steps(self, steps: Sequence[tuple[int, Sequence[int], int, bool]],
                     adapters: Sequence[tuple[NativeAdapter, float]]) -> list[np.ndarray]:
        """One ``llama_decode`` over several sequences, under ``adapters``: each step
        ``(seq, tokens, start_pos, all_rows)`` evaluates its tokens after its sequence's KV.
        Returns each step's logits (copies): ``[len(tokens), n_vocab]`` with ``all_rows``, else its
        last token's ``[1, n_vocab]``. The tokens together must fit ``n_batch``."""
        total = sum(len(t) for _, t, _, _ in steps)
        if total > self.n_batch:
            raise NativeError(f"{total} tokens in one batched step exceed n_batch ({self.n_batch})")
        for _, tokens, start, _ in steps:
            if start + len(tokens) > self.n_ctx:
                raise ContextOverflowError(f"{start + len(tokens)} tokens do not fit the context of {self.n_ctx}",
                                           needed=start + len(tokens), n_ctx=self.n_ctx)
        n_vocab = self.model.n_vocab
        with self._lock:
            self.set_adapters(adapters)
            batch = self._batch
            batch.n_tokens = total
            i = 0
            for seq, tokens, start, all_rows in steps:
                for j, tok in enumerate(tokens):
                    batch.token[i] = tok
                    batch.pos[i] = start + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = all_rows or j == len(tokens) - 1
                    i += 1
            self._run_batch()
            outs, i = [], 0
            for _, tokens, _, all_rows in steps:
                rows = range(i, i + len(tokens)) if all_rows else (i + len(tokens) - 1,)
                out = np.empty((len(rows), n_vocab), dtype=np.float32)
                for k, r in enumerate(rows):
                    out[k] = np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ptr, r), (n_vocab,))
                outs.append(out)
                i += len(tokens)
        return outs

    def _run_batch(self) -> None:
        if self._worker is not None:
            rc = self._worker.submit(self._llama_decode).result()
        else:
            rc = self._llama_decode()
        if rc == 2 and self._abort_check is not None:  # llama_decode: 2 = aborted
            raise CancelledError("the evaluation was cancelled")
        if rc != 0:
            raise NativeError(f"llama_decode failed ({rc})")
        self._decoded += 1

    def _llama_decode(self) -> int:
        with self.model.adapter_lock.shared():  # may re-size the graph over the model's adapters
            return int(ll.llama_decode(self.ptr, self._batch))

    def last_logits(self) -> np.ndarray:
        """The last evaluated token's logits ``[n_vocab]`` (a view into llama.cpp's buffer)."""
        return self.logits_ith(-1)

    def logits_ith(self, i: int) -> np.ndarray:
        """The logits ``[n_vocab]`` of row ``i`` of the last decode (-1: its last row; a row is
        kept for each token decoded with its logits), a view into llama.cpp's buffer."""
        ptr = ll.llama_get_logits_ith(self.ptr, i)
        if not ptr:
            raise NativeError(f"llama.cpp has no logits for row {i} of the last decode")
        return np.ctypeslib.as_array(ptr, (self.model.n_vocab,))

    @property
    def has_output(self) -> bool:
        """Whether the context has an output buffer (anything was decoded since it was made)."""
        return self._decoded > 0

    def set_last_logits(self, logits: np.ndarray) -> None:
        """Put ``logits`` ``[n_vocab]`` (kept from an earlier evaluation of the history the KV
        holds) where the sampler reads the last token's: llama.cpp's output row of the last
        decode. Needs a decode since the context was made (its output buffer exists)."""
        if not self.has_output:
            raise NativeError("no output buffer yet: nothing was decoded in this context")
        self.last_logits()[:] = logits


#: what a GBNF string literal escapes (llama.cpp's ``common/json-schema-to-grammar.cpp``)
_GBNF_LITERAL_ESCAPE = re.compile(r'[\r\n"\\]')
_GBNF_LITERAL_ESCAPES = {"\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def json_schema_converter(rules: dict[str, str]) -> Any:
    """The bindings' JSON-schema-to-GBNF converter (``llama_cpp.llama_grammar.SchemaConverter``,
    llama-cpp-python's port of llama.cpp's ``json_schema_to_grammar.py``; pure Python), with the
    built-in rules named in ``rules`` replaced by the given GBNF and remote ``$ref`` fetching off.
    Literals are escaped as llama.cpp's own converter does (``common/json-schema-to-grammar.cpp``,
    ``GRAMMAR_LITERAL_ESCAPES``: ``\\`` too): the port leaves a backslash bare, so an ``enum``,
    ``const`` or property name holding ``"`` or ``\\`` gave a grammar that does not parse.
    Use: ``c.resolve_refs(schema, url)``, ``c.visit(schema, "")``, ``c.format_grammar()``."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        def _add_rule(self, name: str, rule: str) -> str:
            return super()._add_rule(name, rules.get(name, rule))

        def _format_literal(self, literal: str) -> str:
            return '"' + _GBNF_LITERAL_ESCAPE.sub(lambda m: _GBNF_LITERAL_ESCAPES[m.group(0)], literal) + '"'

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


#: ``llama_token_data`` (include/llama.h) as a NumPy record, to fill candidates without a Python loop
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class NativeSampler:
    """A llama.cpp sampler chain, built stage by stage (``llama_sampler_chain_add``); each
    ``add_*`` returns the sampler. A grammar (:meth:`set_grammar`) is kept beside the chain, as
    llama.cpp's ``common_sampler`` keeps it: the chain picks, the grammar checks the pick, and only
    when it refuses is the grammar applied to the whole vocabulary and the chain run again (a
    grammar over 262k candidates costs more than a token's decode)."""

    def __init__(self, model: NativeModel) -> None:
        self.ptr = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        self.model = model
        self.grammar: ctypes.c_void_p | None = None
        self._cand: np.ndarray | None = None  # the candidates, reused token after token
        self._ids: np.ndarray | None = None
        self._stages = 0
        self._greedy_only = False  # the chain is llama.cpp's greedy stage alone

    def _add(self, stage: object) -> NativeSampler:
        ll.llama_sampler_chain_add(self.ptr, stage)
        self._stages += 1
        self._greedy_only = False
        return self

    def add_penalties(self, last_n: int, repeat: float, frequency: float = 0.0, presence: float = 0.0) -> NativeSampler:
        return self._add(ll.llama_sampler_init_penalties(self.model.n_vocab, last_n, repeat, frequency, presence))

    def add_logit_bias(self, bias: Sequence[tuple[int, float]]) -> NativeSampler:
        """Add ``bias`` to the logits of its tokens (ids checked by the caller)."""
        arr = (ll.llama_logit_bias * len(bias))(*[ll.llama_logit_bias(t, b) for t, b in bias])
        return self._add(ll.llama_sampler_init_logit_bias(self.model.n_vocab, len(bias), arr))

    def add_greedy(self) -> NativeSampler:
        self._add(ll.llama_sampler_init_greedy())
        self._greedy_only = self._stages == 1
        return self

    def add_top_k(self, k: int) -> NativeSampler:
        return self._add(ll.llama_sampler_init_top_k(k))

    def add_top_p(self, p: float, min_keep: int = 1) -> NativeSampler:
        return self._add(ll.llama_sampler_init_top_p(p, min_keep))

    def add_min_p(self, p: float, min_keep: int = 1) -> NativeSampler:
        return self._add(ll.llama_sampler_init_min_p(p, min_keep))

    def add_temperature(self, t: float) -> NativeSampler:
        return self._add(ll.llama_sampler_init_temp(t))

    def add_dist(self, seed: int) -> NativeSampler:
        return self._add(ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def set_grammar(self, gbnf: str, root: str = "root") -> NativeSampler:
        """Constrain every sampled token to ``gbnf`` (llama.cpp's grammar sampler). Raises
        :class:`InvalidRequestError` with llama.cpp's reason when the grammar does not parse
        (a syntax error, an undefined rule, left recursion)."""
        with logged_errors() as lines, native_stderr() as printed:
            g = ll.llama_sampler_init_grammar(self.model.vocab, gbnf.encode(), root.encode())
        if not g:
            why = [ln.split("error parsing grammar: ", 1)[1] for ln in printed if "error parsing grammar: " in ln]
            raise InvalidRequestError(f"the grammar does not parse: {'; '.join(why) or _reason(lines)}", param="grammar")
        if self.grammar is not None:
            ll.llama_sampler_free(self.grammar)
        self.grammar = g
        return self

    def accept(self, token: int) -> None:
        ll.llama_sampler_accept(self.ptr, token)

    def sample(self, ctx: NativeContext, row: int = -1) -> int:
        """Pick the next token from ``ctx``'s logits of ``row`` of the last decode (-1: the last
        row) and accept it (chain and grammar)."""
        if self.grammar is None:
            return int(ll.llama_sampler_sample(self.ptr, ctx.ptr, row))
        return self.sample_logits(ctx.logits_ith(row))

    def sample_logits(self, logits: np.ndarray) -> int:
        """Like :meth:`sample`, from ``logits`` ``[n_vocab]`` given (a copy taken from a batched
        decode) rather than a context's: the same chain over the same candidates
        (``llama_sampler_sample`` builds them from the logits as :meth:`_pick` does). A chain of
        greedy alone takes the first largest logit, as its stage does (``llama_sampler_greedy_apply``),
        without building the candidates."""
        if self._greedy_only and self.grammar is None:
            tok = int(np.argmax(logits))
            ll.llama_sampler_accept(self.ptr, tok)
            return tok
        tok = self._pick(logits, grammar_first=False)
        if self.grammar is None:
            ll.llama_sampler_accept(self.ptr, tok)
            return tok
        one = np.array([(tok, 0.0, 0.0)], dtype=_TOKEN_DATA)
        self._apply(self.grammar, one)
        if not np.isfinite(one["logit"][0]):  # the grammar refuses the chain's pick: constrain all, pick again
            tok = self._pick(logits, grammar_first=True)
        ll.llama_sampler_accept(self.grammar, tok)
        ll.llama_sampler_accept(self.ptr, tok)
        return tok

    def _pick(self, logits: np.ndarray, *, grammar_first: bool) -> int:
        cand = self._cand
        if cand is None:
            cand = self._cand = np.empty(len(logits), dtype=_TOKEN_DATA)
            self._ids = np.arange(len(logits), dtype=np.int32)
        cand["id"] = self._ids  # the stages reorder the array in place: refilled each time
        cand["logit"] = logits
        cand["p"] = 0.0
        if grammar_first:
            self._apply(self.grammar, cand)
            if not np.isfinite(cand["logit"]).any():
                raise InvalidRequestError(
                    "the grammar allows no token here (it cannot be completed, or it ends where the model has no "
                    "end-of-generation token): check the grammar", param="grammar")
        size, selected = self._apply(self.ptr, cand)
        if not 0 <= selected < size:
            raise NativeError("llama.cpp's sampler chain selected no token")
        return int(cand["id"][selected])

    def _apply(self, sampler: object, cand: np.ndarray) -> tuple[int, int]:
        """``llama_sampler_apply`` over ``cand`` in place; returns the array's size after it
        (stages such as top-k shrink it; the kept entries are at the front) and the index the
        chain selected (-1: none)."""
        arr = ll.llama_token_data_array(
            data=cand.ctypes.data_as(ctypes.POINTER(ll.llama_token_data)), size=len(cand), selected=-1, sorted=False)
        ll.llama_sampler_apply(sampler, ctypes.byref(arr))
        if arr.data and ctypes.addressof(arr.data.contents) != cand.ctypes.data:
            raise NativeError("a sampler stage replaced the candidate array (unsupported by edge-lora's sampler)")
        return int(arr.size), int(arr.selected)

    def close(self) -> None:
        if self.ptr:
            ll.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar is not None:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None
