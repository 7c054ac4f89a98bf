"""Check a GGUF adapter against a GGUF base in Python, with llama.cpp's own rules.

llama.cpp throws from C++ on the first mismatch; this lists every problem first,
so the runtime and ``edge-lora inspect --base`` can refuse with a complete report.
"""

from __future__ import annotations

import math

from gguf import Keys

from .finite import F16_MAX, nonfinite_tensors
from .gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, OUTPUT_TENSOR, TOKEN_EMBD_TENSOR, GGUFInfo


def lora_pairs(adapter: GGUFInfo) -> tuple[dict[str, dict[str, tuple[int, ...]]], list[str]]:
    """Group an adapter's tensors by base tensor name: ``{"blk.0.attn_q.weight": {"a": shape, "b": shape}}``."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    problems: list[str] = []
    for name, t in adapter.tensors.items():
        if name.endswith(LORA_A_SUFFIX):
            pairs.setdefault(name[: -len(LORA_A_SUFFIX)], {})["a"] = t.shape
        elif name.endswith(LORA_B_SUFFIX):
            pairs.setdefault(name[: -len(LORA_B_SUFFIX)], {})["b"] = t.shape
        elif name.endswith("_norm.weight"):
            continue  # llama.cpp skips these too
        else:
            problems.append(f"tensor {name}: not a LoRA factor (.lora_a/.lora_b)")
    for base_name, ab in pairs.items():
        if set(ab) != {"a", "b"}:
            problems.append(f"{base_name}: lora_{'b' if 'a' in ab else 'a'} is missing")
    return pairs, problems


def adapter_problems(adapter: GGUFInfo, base: GGUFInfo | None, *, check_data: bool = True) -> list[str]:
    """Every reason llama.cpp would refuse ``adapter`` (on ``base`` when given), and every tensor
    holding NaN or infinite values (``check_data``: reads the tensor data once)."""
    problems: list[str] = []
    if not adapter.is_adapter:
        kind = adapter.file_type or "model"
        problems.append(f"general.type is {kind!r}, not 'adapter' (is this a base model?)")
        return problems
    adapter_type = adapter.metadata.get(Keys.Adapter.TYPE)
    if adapter_type != "lora":
        problems.append(f"adapter.type is {adapter_type!r}, only 'lora' is supported")
    alpha = adapter.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        problems.append(f"{Keys.Adapter.LORA_ALPHA} must be a finite number, found {alpha!r}")
    elif abs(alpha) > F16_MAX:
        problems.append(f"{Keys.Adapter.LORA_ALPHA}={alpha:g} is beyond ±65504: no trained adapter has such a scale, "
                        "and llama.cpp's f16 paths would overflow")
    pairs, pair_problems = lora_pairs(adapter)
    problems += pair_problems
    if check_data:
        problems += nonfinite_tensors(adapter)
    if not pairs:
        problems.append("no LoRA tensors")
    if base is None:
        return problems
    if base.is_adapter:
        return problems + [f"{base.path} is an adapter, not a base model"]
    if adapter.architecture != base.architecture:
        problems.append(f"architecture {adapter.architecture!r} does not match the base's {base.architecture!r}")
        return problems
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            continue
        problems += _shape_problems(name, ab["a"], ab["b"], base)
    if TOKEN_EMBD_TENSOR in pairs and OUTPUT_TENSOR not in base.tensors:
        # the tied output *is* token_embd in llama.cpp: its LoRA would hit the output matmul
        # with the embedding layout and abort the process
        problems.append(
            f"{TOKEN_EMBD_TENSOR}: embedding LoRA on a base whose output shares the token embedding "
            "(llama.cpp would apply it to the output layer and abort)"
        )
    return problems


def _shape_problems(name: str, a: tuple[int, ...], b: tuple[int, ...], base: GGUFInfo) -> list[str]:
    w = base.tensors.get(name)
    if w is None:
        return [f"{name}: the base has no such tensor"]
    if len(a) != 2 or len(b) != 2 or len(w.shape) != 2:
        return [f"{name}: expected 2-D factors and weight, found a{a} b{b} weight{w.shape}"]
    # numpy order; llama-adapter.cpp's checks, transposed
    if name == TOKEN_EMBD_TENSOR:
        ok = w.shape[1] == b[0] and w.shape[0] == a[0] and a[1] == b[1]
    else:
        ok = w.shape[1] == a[1] and w.shape[0] == b[0] and a[0] == b[1]
    if not ok:
        return [f"{name}: lora_a {a} and lora_b {b} do not fit the base weight {w.shape}"]
    return []


def adapter_ranks(adapter: GGUFInfo) -> dict[str, int]:
    """Rank of each adapted base tensor (llama.cpp takes it from lora_b)."""
    pairs, _ = lora_pairs(adapter)
    return {name: ab["b"][-1] for name, ab in pairs.items() if "b" in ab}
