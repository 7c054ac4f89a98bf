"""Write a GGUF LoRA adapter atomically, in the asked storage type: the one adapter writer."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFType, GGUFValueType, GGUFWriter, Keys
from gguf.quants import QuantError, quantize

from ..outputs import atomic_path
from .gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX

OUTTYPES: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
}


@dataclass(frozen=True)
class OutTensor:
    name: str
    data: np.ndarray  # float32, numpy order


def pair_tensors(pairs: Mapping[str, Any]) -> list[OutTensor]:
    """The ``.lora_a`` / ``.lora_b`` tensors of ``{base tensor name: LoraPair}`` (scales already
    folded: the file's alpha decides the rest), in the order given."""
    out: list[OutTensor] = []
    for name, pair in pairs.items():
        out += [OutTensor(name + LORA_A_SUFFIX, pair.a), OutTensor(name + LORA_B_SUFFIX, pair.b)]
    return out


def encode(data: np.ndarray, outtype: str) -> tuple[np.ndarray, GGMLQuantizationType, str | None]:
    """Encode one tensor; returns (array, type, note). Q8_0 needs rows that are a multiple of 32."""
    qtype = OUTTYPES[outtype]
    if qtype == GGMLQuantizationType.F32:
        return data.astype(np.float32, copy=False), qtype, None  # no copy of what is already f32
    if qtype == GGMLQuantizationType.F16:
        return data.astype(np.float16, copy=False), qtype, None
    try:
        return quantize(data.astype(np.float32), qtype), qtype, None
    except QuantError as exc:
        # llama.cpp's converters do the same for rank-sized rows; we say so instead of hiding it
        return data.astype(np.float16), GGMLQuantizationType.F16, f"kept f16 ({exc})"


def write_adapter(
    path: Path,
    arch: str,
    alpha: float,
    tensors: list[OutTensor],
    outtype: str,
    metadata: dict[str, Any],
    progress: bool,
) -> list[str]:
    """Write the adapter file atomically; returns per-tensor notes (Q8_0 fallbacks)."""
    notes: list[str] = []
    with atomic_path(path) as tmp:
        writer = GGUFWriter(tmp, arch)
        writer.add_type(GGUFType.ADAPTER)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, float(alpha))
        for key, value in metadata.items():
            _add_value(writer, key, value)
        # numpy's casts release the GIL: encode tensors on every core
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            encoded = list(pool.map(lambda t: encode(t.data, outtype), tensors))
        for t, (data, qtype, note) in zip(tensors, encoded):
            if note:
                notes.append(f"{t.name}: {note}")
            writer.add_tensor(t.name, data, raw_dtype=qtype if qtype not in _NATIVE else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress and sys.stderr.isatty())
        writer.close()
    return notes


_NATIVE = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array written with an explicit element type (llama.cpp checks some: the aLoRA
    invocation tokens must be UINT32, which gguf-py would not infer from Python ints)."""

    values: tuple[Any, ...]
    element_type: GGUFValueType


def _add_value(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, GGUFArray):
        writer.add_key_value(key, list(value.values), GGUFValueType.ARRAY, value.element_type)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        writer.add_string(key, str(value))
