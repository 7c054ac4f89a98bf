"""A tiny llama model and LoRA adapter written as GGUF, with a NumPy reference forward pass.

Used by the engine smoke test (``edge-lora doctor``, the runtime's first-use check) and by
the portability tests: the weights are quantized with ggml's own quantizer
(:func:`edge_lora.engine.native.quantize_rows`) and dequantized back with gguf-py's
independent implementation, so the reference runs on exactly the weights llama.cpp reads.

The reference follows llama.cpp's LLM_ARCH_LLAMA graph (``src/models/llama.cpp``): RMSNorm,
rotary embedding in "normal" mode (adjacent pairs rotate, ``theta_i = pos * base^(-2i/d)``,
on the GGUF row order), grouped-query attention scaled by ``1/sqrt(head_dim)``, SwiGLU, and
LoRA as ``W x + scale * alpha / r * B (A x)`` (llama.cpp's ``llm_graph_context::build_lora_mm``).
Shapes: weights are NumPy ``[n_out, n_in]``; logits ``[n_tokens, n_vocab]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFType, GGUFWriter, Keys, MODEL_TENSOR, TokenType

from .native import quantize_rows

N_VOCAB = 320  # 3 specials + 256 byte tokens (llama.cpp's SPM vocab needs "<0x0A>") + 61 plain
N_SPECIAL = 3
BOS_ID, EOS_ID = 1, 2

#: one weight type per matrix: every quantization the smoke test proves (row lengths are
#: multiples of 256, as K-quants need)
MIXED_TYPES: dict[MODEL_TENSOR, QT] = {
    MODEL_TENSOR.TOKEN_EMBD: QT.Q8_0,
    MODEL_TENSOR.ATTN_Q: QT.Q4_0,
    MODEL_TENSOR.ATTN_K: QT.Q4_K,
    MODEL_TENSOR.ATTN_V: QT.Q5_K,
    MODEL_TENSOR.ATTN_OUT: QT.Q6_K,
    MODEL_TENSOR.FFN_GATE: QT.Q4_K,
    MODEL_TENSOR.FFN_UP: QT.Q5_K,
    MODEL_TENSOR.FFN_DOWN: QT.Q6_K,
    MODEL_TENSOR.OUTPUT: QT.Q8_0,
}
@dataclass(frozen=True)
class TinyConfig:
    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 2
    n_layer: int = 2
    rope_base: float = 10000.0
    eps: float = 1e-5
    n_ctx_train: int = 256

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class TinyModel:
    """The dequantized weights llama.cpp will read, by GGUF tensor name ``[n_out, n_in]``."""

    config: TinyConfig
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    types: dict[str, QT] = field(default_factory=dict)


@dataclass
class TinyAdapter:
    """LoRA pairs by base tensor name: ``a`` ``[r, n_in]``, ``b`` ``[n_out, r]``; alpha for all."""

    alpha: float
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def rank(self) -> int:
        return next(iter(self.pairs.values()))[0].shape[0]


def _name(t: MODEL_TENSOR, bid: int | None = None) -> str:
    return gguf.TENSOR_NAMES[t].format(bid=bid) + ".weight"


def _shape(t: MODEL_TENSOR, c: TinyConfig) -> tuple[int, int]:
    kv = c.n_head_kv * c.head_dim
    return {
        MODEL_TENSOR.TOKEN_EMBD: (N_VOCAB, c.n_embd),
        MODEL_TENSOR.OUTPUT: (N_VOCAB, c.n_embd),
        MODEL_TENSOR.ATTN_Q: (c.n_embd, c.n_embd),
        MODEL_TENSOR.ATTN_K: (kv, c.n_embd),
        MODEL_TENSOR.ATTN_V: (kv, c.n_embd),
        MODEL_TENSOR.ATTN_OUT: (c.n_embd, c.n_embd),
        MODEL_TENSOR.FFN_GATE: (c.n_ff, c.n_embd),
        MODEL_TENSOR.FFN_UP: (c.n_ff, c.n_embd),
        MODEL_TENSOR.FFN_DOWN: (c.n_embd, c.n_ff),
    }[t]


def write_vocab(w: GGUFWriter, n_vocab: int = N_VOCAB) -> None:
    """A synthetic SentencePiece ("llama") vocabulary of exactly ``n_vocab`` tokens: 3 specials,
    the 256 byte tokens llama.cpp's SPM tokenizer spells unknown text with, then ``tokN``."""
    n_plain = n_vocab - N_SPECIAL - 256
    if n_plain < 0:
        raise ValueError(f"n_vocab {n_vocab} < {N_SPECIAL + 256}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + [f"tok{i}" for i in range(n_plain)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * n_plain
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * (N_SPECIAL + 256) + [-float(i) for i in range(n_plain)])
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)


def write_base(path: str | Path, types: Mapping[MODEL_TENSOR, QT] | QT = MIXED_TYPES, *,
               config: TinyConfig = TinyConfig(), seed: int = 0) -> TinyModel:
    """Write a random tiny llama base to ``path``; ``types`` is one type for every matrix or a
    type per matrix kind (norms stay f32). Returns the dequantized weights."""
    c = config
    rng = np.random.default_rng(seed)
    model = TinyModel(c)
    w = GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name("edge-lora tiny smoke-test model")
    w.add_context_length(c.n_ctx_train)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.n_ff)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_head_kv)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_base)
    w.add_layer_norm_rms_eps(c.eps)
    write_vocab(w)

    def add_matrix(t: MODEL_TENSOR, bid: int | None, std: float) -> None:
        name = _name(t, bid)
        rows, cols = _shape(t, c)
        data = rng.normal(0.0, std, size=(rows, cols)).astype(np.float32)
        qtype = types if isinstance(types, QT) else types[t]
        if qtype == QT.F32:
            model.weights[name], stored = data, data
        else:
            raw = np.frombuffer(quantize_rows(data, int(qtype)), dtype=np.uint8).reshape(rows, -1)
            model.weights[name] = gguf.quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float32)
            stored = raw
        model.types[name] = qtype
        w.add_tensor(name, stored, raw_dtype=None if qtype == QT.F32 else qtype)

    def add_norm(t: MODEL_TENSOR, bid: int | None) -> None:
        data = (1.0 + 0.1 * rng.standard_normal(c.n_embd)).astype(np.float32)
        model.weights[_name(t, bid)] = data
        w.add_tensor(_name(t, bid), data)

    add_matrix(MODEL_TENSOR.TOKEN_EMBD, None, 1.0)
    for i in range(c.n_layer):
        add_norm(MODEL_TENSOR.ATTN_NORM, i)
        for t in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V, MODEL_TENSOR.ATTN_OUT,
                  MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN):
            add_matrix(t, i, 1.0 / np.sqrt(_shape(t, c)[1]))
        add_norm(MODEL_TENSOR.FFN_NORM, i)
    add_norm(MODEL_TENSOR.OUTPUT_NORM, None)
    # logits of std ~3: greedy choices with clear margins over quantization noise
    add_matrix(MODEL_TENSOR.OUTPUT, None, 3.0 / np.sqrt(c.n_embd))
    _finish(w)
    return model


def write_adapter(path: str | Path, model: TinyModel, *, rank: int = 8, alpha: float = 16.0, seed: int = 1,
                  targets: Sequence[MODEL_TENSOR] = (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.FFN_UP),
                  storage: QT = QT.F32, invocation_tokens: Sequence[int] = ()) -> TinyAdapter:
    """Write a GGUF LoRA adapter (f32 or f16 ``storage``) over ``model`` on ``targets`` of every layer;
    the returned factors are the stored values. ``invocation_tokens``: an aLoRA's (UINT32)."""
    rng = np.random.default_rng(seed)
    c = model.config
    w = GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_type(GGUFType.ADAPTER)
    w.add_string(Keys.Adapter.TYPE, "lora")
    w.add_float32(Keys.Adapter.LORA_ALPHA, float(alpha))
    if invocation_tokens:
        w.add_key_value(Keys.Adapter.ALORA_INVOCATION_TOKENS, [int(t) for t in invocation_tokens],
                        gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT32)
    pairs = {}
    for i in range(c.n_layer):
        for t in targets:
            name = _name(t, i)
            n_out, n_in = _shape(t, c)
            a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(rank, n_in)).astype(np.float32)
            b = rng.normal(0.0, 0.5 / np.sqrt(rank), size=(n_out, rank)).astype(np.float32)
            if storage == QT.F16:
                a, b = a.astype(np.float16), b.astype(np.float16)
            elif storage != QT.F32:
                raise ValueError(f"adapter storage {storage.name}: f32 or f16")
            pairs[name] = (a.astype(np.float32), b.astype(np.float32))
            w.add_tensor(name + ".lora_a", a)
            w.add_tensor(name + ".lora_b", b)
    _finish(w)
    return TinyAdapter(alpha=alpha, pairs=pairs)


def _finish(w: GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """``x`` ``[n_tokens, n_heads, head_dim]`` at positions 0..n-1, llama.cpp's normal mode."""
    n, _, d = x.shape
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def reference_logits(model: TinyModel, tokens: Sequence[int], adapter: TinyAdapter | None = None,
                     scale: float = 1.0) -> np.ndarray:
    """Logits ``[len(tokens), N_VOCAB]`` (float64 arithmetic) for ``tokens`` at positions 0..n-1."""
    c, W = model.config, model.weights
    lora_scale = scale * adapter.alpha / adapter.rank if adapter else 0.0

    def mm(name: str, x: np.ndarray) -> np.ndarray:
        y = x @ W[name].astype(np.float64).T
        if adapter and name in adapter.pairs:
            a, b = adapter.pairs[name]
            y = y + lora_scale * ((x @ a.astype(np.float64).T) @ b.astype(np.float64).T)
        return y

    n = len(tokens)
    x = W[_name(MODEL_TENSOR.TOKEN_EMBD)].astype(np.float64)[list(tokens)]
    group = c.n_head // c.n_head_kv
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    for i in range(c.n_layer):
        h = _rms(x, W[_name(MODEL_TENSOR.ATTN_NORM, i)], c.eps)
        q = _rope(mm(_name(MODEL_TENSOR.ATTN_Q, i), h).reshape(n, c.n_head, c.head_dim), c.rope_base)
        k = _rope(mm(_name(MODEL_TENSOR.ATTN_K, i), h).reshape(n, c.n_head_kv, c.head_dim), c.rope_base)
        v = mm(_name(MODEL_TENSOR.ATTN_V, i), h).reshape(n, c.n_head_kv, c.head_dim)
        heads = []
        for hd in range(c.n_head):
            s = q[:, hd] @ k[:, hd // group].T / np.sqrt(c.head_dim) + mask
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            heads.append((p / p.sum(axis=-1, keepdims=True)) @ v[:, hd // group])
        x = x + mm(_name(MODEL_TENSOR.ATTN_OUT, i), np.concatenate(heads, axis=-1))
        h = _rms(x, W[_name(MODEL_TENSOR.FFN_NORM, i)], c.eps)
        g = mm(_name(MODEL_TENSOR.FFN_GATE, i), h)
        x = x + mm(_name(MODEL_TENSOR.FFN_DOWN, i), g / (1.0 + np.exp(-g)) * mm(_name(MODEL_TENSOR.FFN_UP, i), h))
    return mm(_name(MODEL_TENSOR.OUTPUT), _rms(x, W[_name(MODEL_TENSOR.OUTPUT_NORM)], c.eps))
