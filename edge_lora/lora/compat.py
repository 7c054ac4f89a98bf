"""Check a GGUF adapter against a GGUF base in Python, with llama.cpp's own rules.

llama.cpp throws from C++ on the first mismatch; this lists every problem first,
so the runtime and ``edge-lora inspect --base`` can refuse with a complete report.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from gguf import GGUFValueType, Keys

from .._validate import f16_problem, is_number
from ..formats.values import nonfinite_tensors
from ..formats.gguf_file import LORA_A_SUFFIX, LORA_B_SUFFIX, OUTPUT_TENSOR, TOKEN_EMBD_TENSOR, GGUFInfo, key_type_problems
from .pair import layout_for, shape_problem


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


def invocation_tokens(adapter: GGUFInfo) -> tuple[int, ...]:
    """An activated LoRA's invocation sequence (``adapter.alora.invocation_tokens``), or () for a
    plain LoRA. Only meaningful once :func:`invocation_problems` found none."""
    v = adapter.metadata.get(Keys.Adapter.ALORA_INVOCATION_TOKENS)
    return tuple(int(t) for t in v) if isinstance(v, list) else ()


def invocation_problems(adapter: GGUFInfo, base: GGUFInfo | None) -> list[str]:
    """What is wrong with an aLoRA's invocation tokens as llama.cpp reads them (an array of
    UINT32, ``llama_adapter_lora_init_impl``), and ids beyond ``base``'s vocabulary."""
    key = Keys.Adapter.ALORA_INVOCATION_TOKENS
    if key not in adapter.metadata:
        return []
    v = adapter.metadata[key]
    found = adapter.value_types.get(key)
    if found != GGUFValueType.ARRAY or adapter.array_types.get(key) != GGUFValueType.UINT32:
        what = f"an array of {adapter.array_types[key].name}" if key in adapter.array_types else getattr(found, "name", found)
        return [f"{key} is stored as {what}, but llama.cpp reads it only as an array of UINT32 (it refuses the file); "
                f"rewrite it as UINT32 token ids"]
    if not isinstance(v, list) or not v:
        return [f"{key} must list 1 to 256 token ids, found {len(v) if isinstance(v, list) else getattr(v, 'length', v)}"]
    vocab = base.tensors[TOKEN_EMBD_TENSOR].shape[0] if base is not None and TOKEN_EMBD_TENSOR in base.tensors else None
    if vocab is not None and max(v) >= vocab:
        return [f"{key} {v}: id {max(v)} is beyond the base's {vocab} tokens (tokenized for another model?)"]
    return []


def adapter_problems(adapter: GGUFInfo, base: GGUFInfo | None, *, check_data: bool = True,
                     archs: Collection[str] = ()) -> list[str]:
    """Every reason llama.cpp would refuse ``adapter`` (on ``base`` when given), and every tensor
    holding NaN or infinite values (``check_data``: reads the tensor data once). ``archs``: the
    adapter archs the base accepts besides its own (:func:`edge_lora.families.adapter_archs`)."""
    problems: list[str] = []
    if not adapter.is_adapter:
        kind = adapter.file_type or "model"
        problems.append(f"general.type is {kind!r}, not 'adapter' (is this a base model?)")
        return problems
    problems += key_type_problems(adapter)
    problems += invocation_problems(adapter, base)
    adapter_type = adapter.metadata.get(Keys.Adapter.TYPE)
    if adapter_type != "lora":
        problems.append(f"adapter.type is {adapter_type!r}, only 'lora' is supported")
    alpha = adapter.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0)
    if not is_number(alpha):
        problems.append(f"{Keys.Adapter.LORA_ALPHA} must be a finite number, found {alpha!r}")
    elif f16_problem(Keys.Adapter.LORA_ALPHA, alpha):
        problems.append(f"{f16_problem(Keys.Adapter.LORA_ALPHA, alpha)} (no trained adapter has such a scale)")
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
    if adapter.architecture != base.architecture and adapter.architecture not in archs:
        problems.append(f"architecture {adapter.architecture!r} does not match the base's {base.architecture!r}")
        return problems
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            continue
        problems += _shape_problems(name, ab["a"], ab["b"], base)
    tied = tied_embedding_problem(pairs, base)
    if tied:
        # the tied output *is* token_embd in llama.cpp: its LoRA would hit the output matmul
        # with the embedding layout and abort the process
        problems.append(f"{tied} (llama.cpp would apply it to the output layer and abort)")
    return problems


def tied_embedding_problem(adapted: Iterable[str], base: GGUFInfo) -> str | None:
    """The one rule for an embedding LoRA on a base whose output layer *is* the token embedding
    (tied weights, no ``output.weight``): llama.cpp applies the LoRA to both uses of the tensor,
    PEFT to the embedding only, so no such adapter runs as trained. ``adapted``: base tensor names."""
    if TOKEN_EMBD_TENSOR in set(adapted) and OUTPUT_TENSOR not in base.tensors:
        return f"{TOKEN_EMBD_TENSOR}: embedding LoRA on a base whose output shares the token embedding (tied weights)"
    return None


def _shape_problems(name: str, a: tuple[int, ...], b: tuple[int, ...], base: GGUFInfo) -> list[str]:
    w = base.tensors.get(name)
    if w is None:
        return [f"{name}: the base has no such tensor"]
    # expert LoRA (3-D) included: llama.cpp applies it with build_lora_mm_id, and its loader checks
    # neither the expert count nor the third dimension: shape_problem does
    problem = shape_problem(name, layout_for(name, len(a)), a, b, w.shape)
    return [problem] if problem else []


def adapter_ranks(adapter: GGUFInfo) -> dict[str, int]:
    """Rank of each adapted base tensor (llama.cpp takes it from lora_b)."""
    pairs, _ = lora_pairs(adapter)
    return {name: ab["b"][-1] for name, ab in pairs.items() if "b" in ab}
