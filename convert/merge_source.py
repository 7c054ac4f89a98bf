"""PEFT and MLX-LM checkpoints, DoRA included, read for ``edge-lora merge``.

The same reading, name mapping, row transforms and checks as :func:`~.converter.convert`,
returning an in-memory :class:`edge_lora.merge.LoraSource` instead of a file, so a DoRA
adapter (which no GGUF adapter can carry) merges straight from its checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_lora.errors import ConversionError
from edge_lora.formats.gguf_file import TOKEN_EMBD_TENSOR, read_gguf
from edge_lora.lora.adapter import LoraSource, file_sha256
from edge_lora.lora.scales import llama_cpp_scale

from .checkpoint import read_checkpoint
from .converter import _base_shape, _plan


def lora_source(adapter: str | os.PathLike[str], base: str | os.PathLike[str], *, scale: float = 1.0,
                adapter_name: str | None = None, text_only: bool = False) -> LoraSource:
    """Read a PEFT/MLX adapter (folder, config or weights file) for merging into the GGUF ``base``
    at user scale ``scale``. DoRA magnitudes are kept (``LoraPair.magnitude``).

    Raises :class:`ConversionError` (or :class:`CheckpointError`) listing every problem, as
    ``convert`` does, except that DoRA is accepted."""
    info = read_gguf(base)
    vocab = info.tensors[TOKEN_EMBD_TENSOR].shape[0] if TOKEN_EMBD_TENSOR in info.tensors else None
    ckpt = read_checkpoint(adapter, adapter_name=adapter_name, text_only=text_only, base_vocab=vocab, allow_dora=True)
    shape = _base_shape(ckpt, info, None)
    problems: list[str] = []
    notes: list[str] = list(ckpt.notes)
    pairs = _plan(ckpt, shape, problems, notes, merging=True)
    if problems:
        raise ConversionError(f"{ckpt.path}: cannot merge into this {shape.spec.name} base", problems)
    # the pairs are folded for a file of alpha ckpt.alpha: llama.cpp's rule gives their scale
    weights = {name: p.scaled(llama_cpp_scale(ckpt.alpha, p.rank, scale)) for name, p in sorted(pairs.items())}
    weights_file = ckpt.path / ckpt.provenance["weights_file"] if ckpt.path.is_dir() else ckpt.path
    return LoraSource(
        label=f"{Path(adapter).name}:{scale:g}", path=ckpt.path, arch=info.architecture,
        sha256=file_sha256(weights_file) if weights_file.is_file() else "",
        user_scale=scale, weights=weights, source_format=str(ckpt.provenance.get("source_format", ckpt.format)),
        invocation_tokens=tuple(ckpt.provenance.get("alora_invocation_tokens") or ()),
        ties_output=ckpt.ties_output,
    )
