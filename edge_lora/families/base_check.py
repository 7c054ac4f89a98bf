"""Check a GGUF base's hyperparameters in Python, before llama.cpp sees the file.

llama.cpp asserts on some values (``GGML_ASSERT(eps >= 0.0f)`` in ggml_rms_norm), divides by
others, and sizes allocations from a few (``block_count``): a bad value aborts the process.
Every key here is the architecture's own (``{arch}.attention.layer_norm_rms_epsilon``...,
from gguf-py's ``Keys``), checked for type, range and agreement with the tensor shapes.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, GGUFValueType, Keys
from gguf import GGMLQuantizationType as QT

from ..formats.values import UNUSABLE_TYPES
from ..errors import GGUFFileError
from ..formats.gguf_file import (TOKEN_EMBD_TENSOR, WEIGHT_SUFFIX, ArrayLength, GGUFInfo, read_gguf, read_string_array,
                                  require_base)

#: beyond any released model, far below what would make llama.cpp allocate absurd tables
MAX_LAYERS = 4096
MAX_CONTEXT = 1 << 27
_BLOCK = re.compile(r"^blk\.(\d+)\.")
#: architectures whose block count includes next-token-prediction layers stored without
#: tensors (llama.cpp's ``nextn_predict_layers``): missing blocks are expected there
ARCHS_WITH_EMPTY_BLOCKS = frozenset(MODEL_ARCH_NAMES[a] for a in (MODEL_ARCH.DEEPSEEK2, MODEL_ARCH.GLM4_MOE))


def _weight(ttype: MODEL_TENSOR, block: int) -> str:
    """A block's weight name from gguf-py's table (``blk.3.attn_k.weight``)."""
    return TENSOR_NAMES[ttype].format(bid=block) + WEIGHT_SUFFIX
#: llama.cpp's rope scaling names (llama-hparams / LLAMA_ROPE_SCALING_TYPES)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
#: tokenizer models the runtime can use (src/llama-vocab.cpp): not "none" (no tokenizer) or "rwkv" (loops)
TOKENIZER_MODELS = ("llama", "gpt2", "hybriddna", "whitespace", "bert", "t5", "plamo2", "gemma4")


def _ints(v: Any) -> list[int] | None:
    """The value as a list of ints (scalars and per-layer arrays), None when not integers."""
    items = v if isinstance(v, list) else [v]
    if not items or any(isinstance(x, bool) or not isinstance(x, int) for x in items):
        return None
    return items


def _floats(v: Any) -> list[float] | None:
    items = v if isinstance(v, list) else [v]
    if not items or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in items):
        return None
    return [float(x) for x in items]


def read_runnable_base(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read ``path`` as a base model llama.cpp can run: :class:`GGUFFileError` for a file that is
    not a GGUF base (:func:`require_base`) or whose hyperparameters it cannot run with (every
    problem of :func:`base_problems` listed)."""
    info = read_gguf(path)
    require_base(info)
    bad = base_problems(info)
    if bad:
        raise GGUFFileError(f"{info.path}: hyperparameters llama.cpp cannot run with", bad)
    return info


def base_problems(info: GGUFInfo) -> list[str]:
    """Every hyperparameter of ``info`` that llama.cpp would abort on, divide by zero with, or
    find inconsistent with the tensors; each names its key. Empty when the base is sound."""
    arch = info.architecture
    if arch not in MODEL_ARCH_NAMES.values():
        return [f"{Keys.General.ARCHITECTURE}={arch!r} is not an architecture llama.cpp knows"]
    problems: list[str] = []

    def key(template: str) -> str:
        return template.format(arch=arch)

    def get(template: str) -> Any:
        return info.metadata.get(key(template))

    def positive_ints(template: str, *, required: bool, upper: int | None = None, zero_ok: bool = False) -> list[int] | None:
        v = get(template)
        if v is None:
            if required:
                problems.append(f"{key(template)} is missing")
            return None
        items = _ints(v)
        low = 0 if zero_ok else 1
        if items is None or any(x < low or (upper is not None and x > upper) for x in items):
            bound = f" and at most {upper}" if upper else ""
            problems.append(f"{key(template)}={v!r}: must be {'a non-negative' if zero_ok else 'a positive'} integer{bound}")
            return None
        return items

    def positive_floats(template: str, *, below: float | None = None) -> list[float] | None:
        v = get(template)
        if v is None:
            return None
        items = _floats(v)
        if items is None or any(not math.isfinite(x) or x <= 0 or (below is not None and x >= below) for x in items):
            bound = f" below {below:g}" if below is not None else ""
            problems.append(f"{key(template)}={v!r}: must be a finite number above 0{bound}")
            return None
        return items

    n_layer = positive_ints(Keys.LLM.BLOCK_COUNT, required=True, upper=MAX_LAYERS)
    positive_ints(Keys.LLM.CONTEXT_LENGTH, required=False, upper=MAX_CONTEXT)
    n_embd = positive_ints(Keys.LLM.EMBEDDING_LENGTH, required=False)
    positive_ints(Keys.LLM.FEED_FORWARD_LENGTH, required=False, zero_ok=True)
    n_head = positive_ints(Keys.Attention.HEAD_COUNT, required=False, zero_ok=True)
    n_head_kv = positive_ints(Keys.Attention.HEAD_COUNT_KV, required=False, zero_ok=True)
    k_len = positive_ints(Keys.Attention.KEY_LENGTH, required=False)
    k_len_swa = positive_ints(Keys.Attention.KEY_LENGTH_SWA, required=False)  # Gemma 4: sliding layers' own
    positive_ints(Keys.Attention.VALUE_LENGTH, required=False)
    for eps in (Keys.Attention.LAYERNORM_RMS_EPS, Keys.Attention.LAYERNORM_EPS):
        positive_floats(eps, below=1.0)
    positive_floats(Keys.Rope.FREQ_BASE)
    positive_floats(Keys.Rope.FREQ_BASE_SWA)
    positive_floats(Keys.Rope.SCALING_FACTOR)
    positive_ints(Keys.Rope.SCALING_ORIG_CTX_LEN, required=False, upper=MAX_CONTEXT)
    scaling = get(Keys.Rope.SCALING_TYPE)
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:  # llama.cpp asserts on others
        problems.append(f"{key(Keys.Rope.SCALING_TYPE)}={scaling!r}: llama.cpp knows {', '.join(ROPE_SCALING_TYPES)}")
    rope_dims = positive_ints(Keys.Rope.DIMENSION_COUNT, required=False, zero_ok=True)
    positive_ints(Keys.Attention.SLIDING_WINDOW, required=False, zero_ok=True)
    for cap in (Keys.LLM.ATTN_LOGIT_SOFTCAPPING, Keys.LLM.FINAL_LOGIT_SOFTCAPPING):
        positive_floats(cap)
    n_expert = positive_ints(Keys.LLM.EXPERT_COUNT, required=False, zero_ok=True)
    n_used = positive_ints(Keys.LLM.EXPERT_USED_COUNT, required=False, zero_ok=True)
    if n_expert and n_used and (n_used[0] > n_expert[0] or (n_expert[0] > 0 and n_used[0] == 0)):
        problems.append(f"{key(Keys.LLM.EXPERT_USED_COUNT)}={n_used[0]} must be between 1 and "
                        f"{key(Keys.LLM.EXPERT_COUNT)}={n_expert[0]}")

    if n_head and max(n_head) == 0:
        problems.append(f"{key(Keys.Attention.HEAD_COUNT)}={get(Keys.Attention.HEAD_COUNT)!r}: no layer has attention heads")
    head_k_len = k_len[0] if k_len else None
    if n_head and n_layer:
        heads = n_head * n_layer[0] if len(n_head) == 1 else n_head
        kvs = (n_head_kv or n_head) * n_layer[0] if len(n_head_kv or n_head) == 1 else (n_head_kv or n_head)
        if len(heads) != n_layer[0] or len(kvs) != n_layer[0]:
            problems.append(f"{key(Keys.Attention.HEAD_COUNT)}/{key(Keys.Attention.HEAD_COUNT_KV)}: per-layer arrays "
                            f"of {len(heads)}/{len(kvs)} values for {n_layer[0]} layers")
        for i, (h, kv) in enumerate(zip(heads, kvs)):
            # llama.cpp: a layer with 0 KV heads is recurrent (hybrid models) and has no attention tensors
            k_name, q_name = _weight(MODEL_TENSOR.ATTN_K, i), _weight(MODEL_TENSOR.ATTN_Q, i)
            k_t, q_t = info.tensors.get(k_name), info.tensors.get(q_name)
            if h > 0 and kv > 0 and h % kv:
                problems.append(f"{key(Keys.Attention.HEAD_COUNT)}={h} is not a multiple of "
                                f"{key(Keys.Attention.HEAD_COUNT_KV)}={kv} (layer {i})")
                break
            if k_t is not None and kv == 0:
                problems.append(f"{key(Keys.Attention.HEAD_COUNT_KV)}=0 for layer {i}, which has attention tensors")
                break
            hd = head_k_len or (n_embd[0] // h if n_embd and h else None)
            if k_len_swa and k_t is not None and len(k_t.shape) == 2 and k_t.shape[0] == kv * k_len_swa[0]:
                hd = k_len_swa[0]  # a sliding layer of its own head size
            if hd and k_t is not None and len(k_t.shape) == 2 and k_t.shape[0] != kv * hd:
                problems.append(f"{key(Keys.Attention.HEAD_COUNT_KV)}={kv} for layer {i}: {k_name} has "
                                f"{k_t.shape[0]} rows, not {kv} heads of {hd}")
                break
            if hd and q_t is not None and len(q_t.shape) == 2 and q_t.shape[0] not in (h * hd, 2 * h * hd):
                problems.append(f"{key(Keys.Attention.HEAD_COUNT)}={h} for layer {i}: {q_name} has "
                                f"{q_t.shape[0]} rows, not {h} heads of {hd}")
                break
    if n_embd and n_head and max(n_head) > 0 and not k_len and n_embd[0] % max(n_head):
        problems.append(f"{key(Keys.LLM.EMBEDDING_LENGTH)}={n_embd[0]} is not a multiple of "
                        f"{key(Keys.Attention.HEAD_COUNT)}={max(n_head)} (and no key_length is given)")
    head_dim = k_len[0] if k_len else (n_embd[0] // max(n_head) if n_embd and n_head and max(n_head) else None)
    if rope_dims and head_dim and (rope_dims[0] > head_dim or rope_dims[0] % 2):
        problems.append(f"{key(Keys.Rope.DIMENSION_COUNT)}={rope_dims[0]}: must be even and at most the head size {head_dim}")

    if n_layer:
        blocks = {int(m.group(1)) for name in info.tensors if (m := _BLOCK.match(name))}
        beyond = sorted(b for b in blocks if b >= n_layer[0])
        if beyond:
            problems.append(f"{key(Keys.LLM.BLOCK_COUNT)}={n_layer[0]} but the file has tensors of block {beyond[0]}")
        elif blocks and len(blocks) < n_layer[0] and arch not in ARCHS_WITH_EMPTY_BLOCKS:
            missing = sorted(set(range(n_layer[0])) - blocks)
            problems.append(f"{key(Keys.LLM.BLOCK_COUNT)}={n_layer[0]} but the file has no tensors for block {missing[0]}")
    embd = info.tensors.get(TOKEN_EMBD_TENSOR)
    if embd is not None and len(embd.shape) == 2:
        if n_embd and embd.shape[1] != n_embd[0]:
            problems.append(f"{key(Keys.LLM.EMBEDDING_LENGTH)}={n_embd[0]} but {TOKEN_EMBD_TENSOR} has rows of {embd.shape[1]}")
        tokens = info.metadata.get(Keys.Tokenizer.LIST)
        n_vocab = tokens.length if isinstance(tokens, ArrayLength) else len(tokens) if isinstance(tokens, list) else None
        if n_vocab is not None and n_vocab != embd.shape[0]:
            problems.append(f"{Keys.Tokenizer.LIST} has {n_vocab} tokens but {TOKEN_EMBD_TENSOR} has {embd.shape[0]} rows")
    bad_types = sorted({t.type_name for t in info.tensors.values() if len(t.shape) >= 2 and QT[t.type_name] in UNUSABLE_TYPES})
    if bad_types:
        problems.append(f"weights stored as {', '.join(bad_types)}, which llama.cpp cannot multiply with")
    problems += vocab_problems(info)
    return problems


def vocab_problems(info: GGUFInfo) -> list[str]:
    """What llama.cpp's vocabulary loader and tokenizer abort on (src/llama-vocab.cpp): every
    token text distinct (``id_to_token.size() == token_to_id.size()``; an empty text counts as
    ``[EMPTY_i]``), the 256 byte tokens of a SentencePiece vocabulary (``byte_to_token`` throws
    from inside ``llama_tokenize`` without them), and a BOS/EOS token to add when
    ``add_bos_token``/``add_eos_token`` is set."""
    md = info.metadata
    tokens = md.get(Keys.Tokenizer.LIST)
    if isinstance(tokens, ArrayLength) and tokens.etype == GGUFValueType.STRING:
        texts = read_string_array(info.path, tokens)
    elif isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        texts = [t.encode("utf-8", "replace") for t in tokens]
    else:
        return [] if tokens is None else [f"{Keys.Tokenizer.LIST} is not a list of strings"]
    problems = []
    model = md.get(Keys.Tokenizer.MODEL)
    if model not in TOKENIZER_MODELS:
        problems.append(f"{Keys.Tokenizer.MODEL}={model!r}: the runtime needs one of {', '.join(TOKENIZER_MODELS)} "
                        "(llama.cpp aborts or loops tokenizing with others)")
    if model == "bert" and any(t.startswith(b"<0x") and t.endswith(b">") and len(t) == 6 for t in texts):
        problems.append(f"{Keys.Tokenizer.MODEL}='bert' with byte tokens: llama.cpp aborts detokenizing them")
    seen: dict[bytes, int] = {}
    for i, text in enumerate(texts):
        text = text.split(b"\0", 1)[0]  # llama.cpp reads token texts as C strings
        text = text or f"[EMPTY_{i}]".encode()
        if text in seen:
            problems.append(f"{Keys.Tokenizer.LIST}: tokens {seen[text]} and {i} are both {text[:40]!r} "
                            "(llama.cpp aborts on a repeated token)")
            break
        seen[text] = i
    if md.get(Keys.Tokenizer.MODEL) == "llama":  # SentencePiece: unknown text is spelled in byte tokens
        missing = [b for b in range(256) if f"<0x{b:02X}>".encode() not in seen and bytes([b]) not in seen]
        if missing:
            problems.append(f"{Keys.Tokenizer.LIST}: this SentencePiece vocabulary has no byte token <0x{missing[0]:02X}> "
                            f"({len(missing)} of 256 missing): llama.cpp's tokenizer aborts on text it must spell in bytes")
    for add_key, id_key in ((Keys.Tokenizer.ADD_BOS, Keys.Tokenizer.BOS_ID), (Keys.Tokenizer.ADD_EOS, Keys.Tokenizer.EOS_ID)):
        tok = md.get(id_key)
        if md.get(add_key) is True and tok is not None and (not isinstance(tok, int) or not 0 <= tok < len(texts)):
            problems.append(f"{add_key} is set but {id_key}={tok!r} is not a token of the {len(texts)}-token vocabulary")
    return problems
