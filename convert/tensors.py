"""Read checkpoint tensor files into numpy: safetensors without torch, .bin with torch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from edge_lora.errors import CheckpointError, MissingDependencyError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Decode bfloat16 stored as uint16: it is the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as float32 arrays (f32, f16, bf16 and f64 accepted)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not an object)")
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(spec.get("dtype"))
        if dtype is None:
            problems.append(f"{name}: dtype {spec.get('dtype')} is not supported (f32, f16, bf16, f64 are)")
            continue
        start, end = spec["data_offsets"]
        shape = tuple(spec["shape"])
        if end > data.size or end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            problems.append(f"{name}: data range {start}..{end} is truncated or does not match shape {shape}")
            continue
        arr = data[start:end].view(dtype).reshape(shape)
        out[name] = bf16_to_f32(arr) if spec["dtype"] == "BF16" else arr.astype(np.float32)
    if problems:
        raise CheckpointError(f"{path}: unreadable tensors", problems)
    return out


def safetensors_dtypes(path: Path) -> set[str]:
    """The storage dtypes named in a safetensors header (for provenance)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch ``.bin`` state dict, loaded with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"{path}: reading .bin checkpoints needs torch: pip install 'edge-lora[convert]' "
            "(or save the adapter as safetensors)"
        ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name} is not a tensor")
        out[name] = t.detach().to(torch.float32).numpy()
    return out
