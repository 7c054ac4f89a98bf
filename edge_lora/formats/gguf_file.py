"""Read a GGUF file's metadata and tensor table in Python, before any native code.

llama.cpp aborts or throws deep inside C++ on a bad file; reading the header here
first turns every such case into a typed :class:`GGUFFileError` naming the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, GGUFValueType, Keys
from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC

from ..errors import GGUFFileError

#: GGUF tensor-name suffixes of an adapter's two factors (llama-adapter.cpp)
LORA_A_SUFFIX = ".lora_a"
LORA_B_SUFFIX = ".lora_b"
WEIGHT_SUFFIX = ".weight"
OUTPUT_TENSOR = TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + WEIGHT_SUFFIX
TOKEN_EMBD_TENSOR = TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + WEIGHT_SUFFIX

#: string arrays longer than this (token lists) are kept as their length only
_MAX_ARRAY_KEEP = 256


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file; ``shape`` is in numpy (row-major) order."""

    name: str
    shape: tuple[int, ...]
    type_name: str
    n_bytes: int
    offset: int = 0  # of its data, from the start of the file


@dataclass(frozen=True)
class ArrayLength:
    """Stands for a long metadata array (a vocabulary) that was not decoded: its ``length``,
    element type and where its items start in the file (:func:`read_string_array` reads them)."""

    length: int
    etype: GGUFValueType | None = None
    offset: int = 0


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata and tensor table of a GGUF file."""

    path: Path
    file_size: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(repr=False)
    #: byte range ``(start, end)`` of each metadata entry (key and value), to copy one verbatim
    kv_spans: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)
    #: the stored type of each metadata value (llama.cpp's typed getters abort on another)
    value_types: dict[str, GGUFValueType] = field(default_factory=dict, repr=False)
    #: the element type of each array value
    array_types: dict[str, GGUFValueType] = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get(Keys.General.ARCHITECTURE, ""))

    @property
    def file_type(self) -> str:
        """``general.type``: ``"adapter"`` for adapters, ``"model"`` or empty for bases."""
        return str(self.metadata.get(Keys.General.TYPE, ""))

    @property
    def is_adapter(self) -> bool:
        return self.file_type == "adapter"

    def arch_value(self, key_template: str, default: Any = None) -> Any:
        """A per-architecture key, e.g. ``arch_value(Keys.LLM.BLOCK_COUNT)``."""
        return self.metadata.get(key_template.format(arch=self.architecture), default)

    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors.values())


SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


class _Cursor:
    """Sequential little-endian reads over a memory map; every overrun is a clear error."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"unexpected end of file at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, keep: bool = True) -> str | None:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"string of {n} bytes at byte {self.pos} runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n] if keep else None
        self.pos += n
        return raw.decode("utf-8", errors="replace") if raw is not None else None

    def value(self, vtype: int) -> Any:
        vt = GGUFValueType(vtype)
        if vt == GGUFValueType.STRING:
            return self.string()
        if vt == GGUFValueType.ARRAY:
            etype, count = GGUFValueType(self.take("<I")), self.take("<Q")
            keep = count <= _MAX_ARRAY_KEEP
            start = self.pos
            if etype == GGUFValueType.STRING:
                items = [self.string(keep) for _ in range(count)]
                return items if keep else ArrayLength(count, etype, start)
            if etype == GGUFValueType.ARRAY:
                raise ValueError("nested arrays are not supported")
            size = struct.calcsize(SCALAR_FORMATS[etype]) * count
            if self.pos + size > len(self.buf):
                raise ValueError(f"array of {count} items at byte {self.pos} runs past the end of the file")
            fmt = "<" + SCALAR_FORMATS[etype][1] * count if keep else None
            items = list(struct.unpack_from(fmt, self.buf, self.pos)) if fmt else ArrayLength(count, etype, start)
            self.pos += size
            return items
        return self.take(SCALAR_FORMATS[vt])


def starts_like_gguf(path: str | Path) -> bool:
    """Whether ``path`` is a file that begins with GGUF's magic (nothing more is checked)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        magic = f.read(4)
    return len(magic) == 4 and int.from_bytes(magic, "little") == GGUF_MAGIC


def is_checkpoint(path: str | Path) -> bool:
    """Whether an adapter path names a training checkpoint to convert (a folder, or a file neither
    named nor made like a GGUF file) rather than a GGUF adapter (whose problems its reader names)."""
    p = Path(path)
    if p.is_dir():
        return True
    return p.is_file() and p.suffix != ".gguf" and not starts_like_gguf(p)


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and check a GGUF file's header (metadata, tensor table, data extent).

    Raises :class:`GGUFFileError` naming the file for anything missing, foreign,
    malformed or truncated. Long arrays (the vocabulary) are skipped, not decoded.
    """
    p = Path(path)
    if not p.exists():
        raise GGUFFileError(f"{p}: file not found")
    if not p.is_file():
        raise GGUFFileError(f"{p}: not a regular file")
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or int.from_bytes(magic, "little") != GGUF_MAGIC:
            raise GGUFFileError(f"{p}: not a GGUF file (bad magic {magic!r})")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                metadata, raw_tensors, data_start, spans, types, etypes = _parse(_Cursor(mm))
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                raise GGUFFileError(f"{p}: malformed or truncated GGUF header ({exc})") from exc
    tensors: dict[str, TensorInfo] = {}
    problems: list[str] = []
    align = int(metadata.get(Keys.General.ALIGNMENT, 32)) or 32
    for name, shape, qtype, offset in raw_tensors:
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elem = int(np.prod(shape)) if shape else 1
        n_bytes = n_elem // block * type_size
        end = data_start + offset + n_bytes
        if end > size:
            problems.append(f"tensor {name} ends at byte {end}, past the end of the file ({size} bytes)")
        if offset % align:  # gguf.cpp refuses these too
            problems.append(f"tensor {name}: data offset {offset} is not a multiple of the alignment {align}")
        if shape and shape[-1] % block:
            problems.append(f"tensor {name}: rows of {shape[-1]} values do not fill {qtype.name} blocks of {block}")
        tensors[name] = TensorInfo(name, shape, qtype.name, n_bytes, data_start + offset)
    if problems:
        raise GGUFFileError(f"{p}: truncated or malformed GGUF file", problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else []))
    return GGUFInfo(path=p, file_size=size, metadata=metadata, tensors=tensors, kv_spans=spans, value_types=types,
                    array_types=etypes)


def _parse(cur: _Cursor) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]], int,
                                  dict[str, tuple[int, int]], dict[str, GGUFValueType], dict[str, GGUFValueType]]:
    cur.take("<I")
    version = cur.take("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    metadata: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    types: dict[str, GGUFValueType] = {}
    etypes: dict[str, GGUFValueType] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        vtype = cur.take("<I")
        value_at = cur.pos
        metadata[key] = cur.value(vtype)
        spans[key] = (start, cur.pos)
        types[key] = GGUFValueType(vtype)
        if types[key] == GGUFValueType.ARRAY:
            etypes[key] = GGUFValueType(struct.unpack_from("<I", cur.buf, value_at)[0])
    raw = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        dims = [cur.take("<Q") for _ in range(n_dims)]
        qtype = GGMLQuantizationType(cur.take("<I"))
        offset = cur.take("<Q")
        raw.append((name, tuple(reversed(dims)), qtype, offset))
    align = int(metadata.get(Keys.General.ALIGNMENT, 32)) or 32
    data_start = (cur.pos + align - 1) // align * align
    return metadata, raw, data_start, spans, types, etypes


def tensor_data(data: np.ndarray, t: TensorInfo) -> np.ndarray:
    """Tensor ``t``'s data out of ``data`` (the whole file as uint8, e.g. a read-only
    ``np.memmap``), shaped as gguf-py's ``GGUFReader`` gives it: F32/F16 as their dtype in
    numpy order, every other type as uint8 rows of bytes (what ``gguf.quants.dequantize`` takes)."""
    raw = data[t.offset : t.offset + t.n_bytes]
    qtype = GGMLQuantizationType[t.type_name]
    if qtype == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(t.shape)
    if qtype == GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(t.shape)
    rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
    return raw.reshape(*t.shape[:-1], t.n_bytes // rows) if len(t.shape) > 1 else raw


def read_string_array(path: str | os.PathLike[str], arr: ArrayLength) -> list[bytes]:
    """The items of a long string array (a vocabulary) as raw bytes, in order."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        out, pos, unpack = [], arr.offset, struct.unpack_from
        for _ in range(arr.length):
            (n,) = unpack("<Q", mm, pos)
            out.append(mm[pos + 8 : pos + 8 + n])
            pos += 8 + n
        return out


def require_base(info: GGUFInfo, what: str = "the base") -> GGUFInfo:
    """``info`` when it is a base model; :class:`GGUFFileError` for an adapter given as one."""
    if info.is_adapter:
        raise GGUFFileError(f"{info.path}: {what} is a LoRA adapter, not a base model" if what != "the base"
                            else f"{info.path}: is a LoRA adapter, not a base model")
    return info


#: the adapter keys llama.cpp reads with typed getters (``gguf_get_val_str``/``_f32`` in
#: ``llama_adapter_lora_init_impl``), which abort the process on a value of another type
ADAPTER_KEY_TYPES = {Keys.General.TYPE: GGUFValueType.STRING, Keys.General.ARCHITECTURE: GGUFValueType.STRING,
                     Keys.Adapter.TYPE: GGUFValueType.STRING, Keys.Adapter.LORA_ALPHA: GGUFValueType.FLOAT32}


def key_type_problems(info: GGUFInfo, expected: dict[str, GGUFValueType] = ADAPTER_KEY_TYPES) -> list[str]:
    """One problem per key stored with another type than llama.cpp reads it as (where present)."""
    return [f"{key} is stored as {info.value_types[key].name}, but llama.cpp reads it only as {want.name} "
            f"(it would abort the process); rewrite the file with {key} as {want.name}"
            for key, want in expected.items() if key in info.value_types and info.value_types[key] != want]


def require_adapter(info: GGUFInfo) -> GGUFInfo:
    """``info`` when it is a GGUF adapter; :class:`GGUFFileError` for a base model given as one."""
    if not info.is_adapter:
        kind = info.file_type or "model"
        raise GGUFFileError(f"{info.path}: general.type is {kind!r}, not 'adapter': a base model, not a LoRA adapter")
    return info
