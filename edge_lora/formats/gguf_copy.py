"""Write a copy of a GGUF model with some tensors replaced.

Metadata entries and every other tensor are copied byte for byte from the base (its
key/value bytes and its memory-mapped data), so the copy differs from the base only
in the replaced tensors and the added keys. Layout per the GGUF spec (ggml
``docs/gguf.md``): header, key/values, tensor infos, data aligned to
``general.alignment`` (default 32).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, Keys
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION

from .gguf_file import SCALAR_FORMATS, GGUFInfo

#: copied in chunks of this many bytes (the base stays memory-mapped, not read into memory)
_CHUNK = 64 << 20


@dataclass(frozen=True)
class Replacement:
    """A tensor written in place of the base's: its type, its size and a function making its
    data (uint8 (rows, row_bytes), or float32 for F32), called when its turn comes."""

    ggml_type: GGMLQuantizationType
    n_bytes: int
    make: Callable[[], np.ndarray]


def write_model_copy(
    info: GGUFInfo,
    out: Path,
    replacements: Mapping[str, Replacement],
    new_fields: Mapping[str, tuple[Any, GGUFValueType, GGUFValueType | None]],
    *,
    progress: bool = False,
) -> None:
    """Write ``out``: the model ``info`` with ``replacements`` (by tensor name) and
    ``new_fields`` (key -> (value, type, array item type)) set or added."""
    align = int(info.metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT))
    if align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment {align} is not a power of two")
    if align < GGUF_DEFAULT_ALIGNMENT:
        # llama.cpp maps tensor data in place and needs 32-byte alignment; the base met it by the
        # chance of its header's length, which the added keys change: say 32 and keep to it
        new_fields = {**new_fields, Keys.General.ALIGNMENT: (GGUF_DEFAULT_ALIGNMENT, GGUFValueType.UINT32, None)}
        align = GGUF_DEFAULT_ALIGNMENT
    kept = [k for k in info.kv_spans if k not in new_fields]
    sizes = {n: (replacements[n].n_bytes if n in replacements else t.n_bytes) for n, t in info.tensors.items()}
    types = {n: (replacements[n].ggml_type if n in replacements else GGMLQuantizationType[t.type_name])
             for n, t in info.tensors.items()}
    base = np.memmap(info.path, dtype=np.uint8, mode="r")
    bar = _bar(sum(sizes.values())) if progress and sys.stderr.isatty() else None
    with open(out, "wb") as f:
        f.write(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(info.tensors), len(kept) + len(new_fields)))
        for key in kept:
            start, end = info.kv_spans[key]
            f.write(base[start:end].tobytes())
        for key, (value, vtype, sub) in new_fields.items():
            f.write(_string(key) + struct.pack("<I", vtype) + _value(value, vtype, sub))
        offset = 0
        for name, t in info.tensors.items():
            dims = tuple(reversed(t.shape))
            f.write(_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, types[name], offset))
            offset += _padded(sizes[name], align)
        _pad(f, align)
        for name, t in info.tensors.items():
            r = replacements.get(name)
            if r is None:
                for lo in range(t.offset, t.offset + t.n_bytes, _CHUNK):
                    f.write(base[lo:min(lo + _CHUNK, t.offset + t.n_bytes)].tobytes())
            else:
                data = np.ascontiguousarray(r.make())
                if data.nbytes != r.n_bytes:
                    raise RuntimeError(f"{name}: {data.nbytes} bytes made, {r.n_bytes} planned")
                f.write(data.tobytes())
            _pad(f, align)
            if bar is not None:
                bar.update(sizes[name])
    if bar is not None:
        bar.close()


def _padded(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _pad(f: BinaryIO, align: int) -> None:
    f.write(b"\0" * (_padded(f.tell(), align) - f.tell()))


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(value: Any, vtype: GGUFValueType, sub: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(str(value))
    if vtype == GGUFValueType.ARRAY:
        if sub is None or sub == GGUFValueType.ARRAY:
            raise ValueError(f"array of {sub!r}: not written by merge")
        return struct.pack("<IQ", sub, len(value)) + b"".join(_value(v, sub, None) for v in value)
    return struct.pack(SCALAR_FORMATS[vtype], value)


def _bar(total: int) -> Any:
    from tqdm import tqdm  # gguf-py's own dependency

    return tqdm(total=total, unit="B", unit_scale=True, desc="merging", leave=False)
