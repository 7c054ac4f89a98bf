"""What a Runtime holds in memory, in bytes (``Runtime.memory()``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from ..formats.gguf_file import GGUFInfo

_KV_TYPES = {"f16": GGMLQuantizationType.F16, "f32": GGMLQuantizationType.F32, "q8_0": GGMLQuantizationType.Q8_0}


@dataclass(frozen=True)
class MemoryUsage:
    """Bytes. ``model_mapped``: the base's tensor data, memory-mapped from its file (shared with
    the page cache); ``model_resident``: the part of that mapping in RAM now (Linux; None
    elsewhere); ``kv_per_context``: one sequence's KV cache (allocated at creation), times
    ``contexts``, the sequences (``n_parallel``: several share a llama context, each with its
    own KV); ``adapters``: the loaded adapters' tensors (llama.cpp copies them in);
    ``snapshots``: saved KV states kept for switching back; ``mixes``: the adapters of mixes
    run as one (:mod:`.mixes`; their file sizes); ``draft``: a draft model's tensors (mapped) and
    its contexts' KV (:mod:`.draft`)."""

    model_mapped: int
    model_resident: int | None
    kv_per_context: int
    contexts: int
    adapters: int
    snapshots: int
    mixes: int = 0
    draft: int = 0

    @property
    def total(self) -> int:
        """The sum of the figures above, counting the whole mapped model. Not counted: llama.cpp's
        compute buffers (allocated per context for the largest batch, hundreds of MiB on a large
        vocabulary) and the Python process itself; compare with the process RSS for those."""
        return (self.model_mapped + self.kv_per_context * self.contexts + self.adapters + self.snapshots
                + self.mixes + self.draft)


def _per_layer(value: object, n_layer: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layer]
    return [int(value or 0)] * n_layer


def kv_cache_bytes(base: GGUFInfo, n_ctx: int, kv_type: str) -> int:
    """KV cache bytes of one context: ``n_ctx * sum over layers of (n_head_kv * (head_k + head_v))``
    elements of ``kv_type`` (llama.cpp's llama_kv_cache, every layer full with ``swa_full``)."""
    n_layer = int(base.arch_value(Keys.LLM.BLOCK_COUNT, 0))
    n_embd = int(base.arch_value(Keys.LLM.EMBEDDING_LENGTH, 0))
    heads = _per_layer(base.arch_value(Keys.Attention.HEAD_COUNT, 0), n_layer)
    kv_heads = _per_layer(base.arch_value(Keys.Attention.HEAD_COUNT_KV) or base.arch_value(Keys.Attention.HEAD_COUNT, 0), n_layer)
    n_head = max(heads) if heads else 0
    head_k = int(base.arch_value(Keys.Attention.KEY_LENGTH) or (n_embd // n_head if n_head else 0))
    head_v = int(base.arch_value(Keys.Attention.VALUE_LENGTH) or head_k)
    block, size = GGML_QUANT_SIZES[_KV_TYPES[kv_type]]
    elements = n_ctx * sum(kv * (head_k + head_v) for kv in kv_heads)
    return elements // block * size


def resident_bytes(path: Path) -> int | None:
    """Resident bytes of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    if not sys.platform.startswith("linux"):
        return None
    target = str(path.resolve())
    total, inside = 0, False
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                    inside = line.rstrip("\n").endswith(target)
                elif inside and line.startswith("Rss:"):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return None
    return total
