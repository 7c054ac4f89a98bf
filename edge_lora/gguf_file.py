"""Read a GGUF file's metadata and tensor table in Python, before any native code.

llama.cpp aborts or throws deep inside C++ on a bad file; reading the header here
first turns every such case into a typed :class:`GGUFFileError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, GGUFReader, GGUFValueType, Keys
from gguf.constants import GGML_QUANT_SIZES, GGUF_MAGIC

from .errors import GGUFFileError

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


@dataclass(frozen=True)
class ArrayLength:
    """Stands for a long metadata array (a vocabulary) that was not decoded."""

    length: int


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata and tensor table of a GGUF file."""

    path: Path
    file_size: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo] = field(repr=False)

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


def _field_value(fld: Any) -> Any:
    types = fld.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        n = len(fld.data)
        if types[-1] == GGUFValueType.STRING and n > _MAX_ARRAY_KEEP:
            return ArrayLength(n)
        if n > _MAX_ARRAY_KEEP:
            return ArrayLength(n)
        return list(fld.contents())
    value = fld.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and check a GGUF file's header. Raises :class:`GGUFFileError`."""
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
    try:
        reader = GGUFReader(p, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors...
        raise GGUFFileError(f"{p}: unreadable or truncated GGUF header ({exc})") from exc

    metadata: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        metadata[name] = _field_value(fld)

    tensors: dict[str, TensorInfo] = {}
    problems: list[str] = []
    for t in reader.tensors:
        qtype = GGMLQuantizationType(t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elem = int(np.prod(shape)) if shape else 1
        n_bytes = n_elem // block * type_size
        end = int(t.data_offset) + n_bytes
        if end > size:
            problems.append(f"tensor {t.name} ends at byte {end}, past the end of the file ({size} bytes)")
        tensors[t.name] = TensorInfo(t.name, shape, qtype.name, n_bytes)
    if problems:
        raise GGUFFileError(f"{p}: truncated GGUF file", problems)
    return GGUFInfo(path=p, file_size=size, metadata=metadata, tensors=tensors)


class EdgeLoraKeys:
    """Provenance keys edge-lora writes into adapters (beside gguf's own ``Keys``)."""

    SOURCE_FORMAT = "edge_lora.source_format"
    BASE_MODEL = "edge_lora.base_model"
    TARGET_MODULES = "edge_lora.target_modules"
    RANKS = "edge_lora.ranks"
    CONVERTER_VERSION = "edge_lora.converter_version"
    PEFT_VERSION = "edge_lora.peft_version"
    WEIGHTS_FILE = "edge_lora.weights_file"
    WEIGHTS_DTYPES = "edge_lora.weights_dtypes"
    SCALES_FOLDED = "edge_lora.scales_folded"
    CHECKED_AGAINST_BASE = "edge_lora.checked_against_base"
