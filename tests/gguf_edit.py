"""Edit GGUF files in place for tests: metadata scalars and tensor bytes (gguf-py's reader in r+ mode,
as gguf-py's own ``gguf_set_metadata.py`` does)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np


def copy_with(src: Path, dst: Path, **scalars: Any) -> Path:
    """Copy ``src`` to ``dst`` and set metadata scalars (key with '.' spelled '__'), same type."""
    shutil.copy(src, dst)
    set_scalars(dst, {k.replace("__", "."): v for k, v in scalars.items()})
    return dst


def scalar_offsets(path: Path) -> dict[str, tuple[int, np.dtype]]:
    """Where each scalar metadata value lies in the file: ``{key: (byte offset, dtype)}``
    (one parse of the header; reading a large vocabulary with gguf-py takes seconds)."""
    r = gguf.GGUFReader(path)
    base = r.data.__array_interface__["data"][0]
    out = {}
    for key, field in r.fields.items():
        if len(field.types) == 1 and field.types[0] not in (gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY):
            part = field.parts[field.data[0]]
            out[key] = (part.__array_interface__["data"][0] - base, part.dtype)
    return out


def set_scalars(path: Path, values: dict[str, Any], offsets: dict[str, tuple[int, np.dtype]] | None = None) -> dict[str, Any]:
    """Overwrite scalar metadata values in place (each keeps its GGUF type); returns the old values."""
    offsets = offsets or scalar_offsets(path)
    old = {}
    with open(path, "r+b") as f:
        for key, value in values.items():
            pos, dtype = offsets[key]
            f.seek(pos)
            old[key] = np.frombuffer(f.read(dtype.itemsize), dtype)[0].item()
            f.seek(pos)
            f.write(np.array(value).astype(dtype).tobytes())
    return old


def poison_tensor(path: Path, name: str) -> None:
    """Make the first value of tensor ``name`` NaN, in its own storage type."""
    r = gguf.GGUFReader(path, "r+")
    t = next(t for t in r.tensors if t.name == name)
    qtype = gguf.GGMLQuantizationType(t.tensor_type)
    raw = t.data.reshape(-1).view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.F32:
        raw[:4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    elif qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0):  # Q8_0: the first block's f16 scale
        raw[:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    elif qtype == gguf.GGMLQuantizationType.BF16:
        raw[:2] = np.frombuffer(np.uint16(0x7FC0).tobytes(), np.uint8)
    else:
        raise ValueError(f"cannot poison {qtype.name}")
    r.data.flush()
