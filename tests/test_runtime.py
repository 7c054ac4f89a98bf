"""The runtime: one base, many adapters per call, against transformers + PEFT."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter, peft_logits, peft_mix
from tiny_models import TOKENS, hf_logits, rel_err

from edge_lora import ContextOverflowError, InvalidRequestError, Runtime, UnknownAdapterError
from edge_lora_convert import convert

#: runtime logits (f32 base, f32 adapters, f32 KV) against transformers + PEFT
RTOL = 1e-3
GREEDY = dict(temperature=0.0, max_tokens=12)
PROMPTS = ["the quick brown fox", "hello world", "1 2 3 4", "tok5 tok6 tok7"]


@dataclass
class World:
    case: str
    model: object
    base: Path
    dirs: dict[str, Path]
    ggufs: dict[str, Path]
    rt: Runtime


def _build(tiny, tmp: Path, case: str) -> World:
    t = tiny(case)
    configs = {
        "sql": dict(r=8, lora_alpha=16, target_modules="all-linear"),
        "tone": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
        "style": dict(r=16, lora_alpha=32, target_modules=["o_proj", "up_proj"]),
    }
    dirs, ggufs = {}, {}
    for i, (name, cfg) in enumerate(configs.items()):
        dirs[name] = tmp / name
        make_peft_adapter(t.model, dirs[name], cfg, seed=10 + i)
        ggufs[name] = tmp / f"{name}.gguf"
        convert(dirs[name], base=t.base_path, out=ggufs[name], outtype="f32")
    rt = Runtime(t.base_path, n_ctx=2048, n_parallel=3, kv_type="f32", n_threads=2)
    for name, path in ggufs.items():
        rt.load_adapter(name, path)
    return World(case, t.model, t.base_path, dirs, ggufs, rt)


@pytest.fixture(scope="module", params=["llama3", "gemma3"])
def world(request, tiny, tmp_path_factory):
    w = _build(tiny, tmp_path_factory.mktemp(f"rt-{request.param}"), request.param)
    yield w
    w.rt.close()


def test_base_and_one_adapter_match_peft(world):
    rt = world.rt
    assert rel_err(rt.logits(TOKENS), hf_logits(world.model, TOKENS)) <= RTOL
    ref = peft_mix(world.model, {"sql": (world.dirs["sql"], 1.0)})
    assert rel_err(rt.logits(TOKENS, {"sql": 1.0}), peft_logits(ref, TOKENS)) <= RTOL


@pytest.mark.parametrize("s1,s2", [(1.0, 1.0), (0.7, -0.4), (1.5, 0.25)])
def test_two_adapters_at_scales_match_peft(world, s1, s2):
    ref = peft_mix(world.model, {"sql": (world.dirs["sql"], s1), "tone": (world.dirs["tone"], s2)})
    want = peft_logits(ref, TOKENS)
    got = world.rt.logits(TOKENS, {"sql": s1, "tone": s2})
    assert rel_err(want, hf_logits(world.model, TOKENS)) > 0.05
    err = rel_err(got, want)
    assert err <= RTOL, f"two adapters ({s1}, {s2}): {err:.2e}"
    print(f"runtime two adapters {world.case} ({s1},{s2}): {err:.3e}")


def test_scale_zero_is_the_base_exactly(world):
    base = world.rt.logits(TOKENS)
    assert np.array_equal(world.rt.logits(TOKENS, {"sql": 0.0}), base)
    assert np.array_equal(world.rt.logits(TOKENS, {}), base)
    assert not np.array_equal(world.rt.logits(TOKENS, {"sql": 1.0}), base)


def test_load_unload_and_base_again(world, tmp_path):
    rt = world.rt
    base = rt.logits(TOKENS)
    rt.load_adapter("extra", world.ggufs["style"], scale=0.5)
    info = rt.adapters["extra"]
    assert info.scale == 0.5 and info.path == world.ggufs["style"] and info.ranks == [16]
    assert info.alpha == 32.0 and info.size_bytes == world.ggufs["style"].stat().st_size
    with_extra = rt.logits(TOKENS, {"extra": None})  # None: the default scale given at load
    assert np.array_equal(with_extra, rt.logits(TOKENS, {"style": 0.5}))
    rt.unload_adapter("extra")
    assert "extra" not in rt.adapters
    assert np.array_equal(rt.logits(TOKENS), base)
    with pytest.raises(UnknownAdapterError, match="loaded adapters: sql, style, tone"):
        rt.logits(TOKENS, {"extra": 1.0})


def test_complete_equals_session_and_stream(world):
    rt = world.rt
    msgs = [{"role": "user", "content": "hello there"}]
    direct = rt.chat(msgs, {"tone": 1.0}, **GREEDY)
    s = rt.session({"tone": 1.0})
    assert s.send("hello there", **GREEDY).text == direct.text
    pieces = list(rt.chat_stream(msgs, {"tone": 1.0}, **GREEDY))
    assert "".join(pieces) == direct.text
    c1 = rt.complete(PROMPTS[0], {"sql": 1.0}, **GREEDY)
    c2 = rt.complete(PROMPTS[0], {"sql": 1.0}, **GREEDY)
    assert c1.tokens == c2.tokens and c1.completion_tokens == len(c1.tokens) > 0
    assert c2.cached_tokens > 0  # the same prompt under the same set reuses its KV
    assert c1.prompt_tokens == len(rt.tokenize(PROMPTS[0]))
    assert c1.timings.total_ms >= c1.timings.ttft_ms > 0


def test_a_repeated_prompt_samples_its_kept_logits(world):
    """The same prompt again under the same set is answered from the logits kept with its KV: no
    token is evaluated (``cached_tokens == prompt_tokens``), and the answer, sampled or greedy,
    and its log-probabilities are exactly those of the first call; another set, or another
    prompt in between, evaluates again."""
    rt = world.rt
    sampled = dict(temperature=0.9, seed=5, max_tokens=12, logprobs=3)
    first = rt.complete(PROMPTS[2], {"sql": 1.0}, **sampled)
    again = rt.complete(PROMPTS[2], {"sql": 1.0}, **sampled)
    assert again.cached_tokens == again.prompt_tokens > first.cached_tokens
    assert again.tokens == first.tokens and again.logprobs == first.logprobs
    one = rt.complete(PROMPTS[2], {"sql": 1.0}, temperature=0.0, max_tokens=1)
    assert one.cached_tokens == one.prompt_tokens and one.tokens == rt.complete(
        PROMPTS[2], {"sql": 1.0}, temperature=0.0, max_tokens=12).tokens[:1]
    other = rt.complete(PROMPTS[2], {"sql": 0.5}, **sampled)
    assert other.cached_tokens < other.prompt_tokens and other.tokens != first.tokens
    rt.complete(PROMPTS[3], {"sql": 1.0}, **GREEDY)
    back = rt.complete(PROMPTS[2], {"sql": 1.0}, **sampled)
    assert back.cached_tokens < back.prompt_tokens and back.tokens == first.tokens
    # a long prompt (a KV snapshot is kept of it when another set takes the context) comes back
    # from the snapshot with its logits: no decode either
    long = " ".join(PROMPTS * 4)
    a = rt.complete(long, {"tone": 1.0}, **sampled)
    rt.complete(long, {"style": 1.0}, **sampled)
    a2 = rt.complete(long, {"tone": 1.0}, **sampled)
    assert a.prompt_tokens >= 32 and a2.cached_tokens == a2.prompt_tokens
    assert a2.tokens == a.tokens and a2.logprobs == a.logprobs


def test_kv_never_reused_across_adapter_sets(tiny, tmp_path):
    """The same prompt under another set recomputes: its output is the fresh one."""
    w = _build(tiny, tmp_path, "llama3")
    try:
        rt = w.rt
        fresh = {}
        for aset in ({}, {"sql": 1.0}, {"sql": 0.5}, {"tone": 1.0}):
            with Runtime(w.base, n_ctx=512, kv_type="f32") as alone:
                for name, path in w.ggufs.items():
                    alone.load_adapter(name, path)
                fresh[str(aset)] = alone.complete(PROMPTS[1], aset, **GREEDY).tokens
        outs = {str(a): rt.complete(PROMPTS[1], a, **GREEDY) for a in ({}, {"sql": 1.0}, {"sql": 0.5}, {"tone": 1.0})}
        for key, c in outs.items():
            assert c.tokens == fresh[key], key
        assert len({tuple(v) for v in fresh.values()}) > 1, "adapters should change the greedy output"
    finally:
        w.rt.close()


def _history(rt: Runtime, n_tokens: int) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    i = 0
    while len(rt.chat_tokens(msgs + [{"role": "user", "content": "x"}])) < n_tokens:
        msgs += [{"role": "user", "content": f"question {i} " * 8}, {"role": "assistant", "content": f"answer {i} " * 8}]
        i += 1
    return msgs


def test_session_switch_and_back_equals_fresh_run(world):
    rt = world.rt
    s = rt.session({"sql": 1.0}, messages=_history(rt, 200))
    s.send("first", **GREEDY)
    s.use({"tone": 1.0})
    s.send("second", **GREEDY)
    s.use({"sql": 1.0})
    back = s.send("third", **GREEDY)
    assert back.cached_tokens >= 200, "switching back should restore the snapshot, not recompute"
    fresh = rt.session({"sql": 1.0}, messages=s.messages[:-2]).send("third", **GREEDY)
    with Runtime(world.base, n_ctx=2048, kv_type="f32", snapshot_mb=0) as alone:
        alone.load_adapter("sql", world.ggufs["sql"])
        cold = alone.chat(s.messages[:-1], {"sql": 1.0}, **GREEDY)
        assert cold.cached_tokens == 0
    assert back.tokens == fresh.tokens == cold.tokens


def test_threads_with_different_sets_match_sequential(world):
    rt = world.rt
    sets = [{}, {"sql": 1.0}, {"tone": 0.8}, {"style": 1.0}, {"sql": 0.5, "tone": 0.5}]
    jobs = [(p, a) for p in PROMPTS for a in sets][:16]
    expected = [rt.complete(p, a, **GREEDY).tokens for p, a in jobs]
    got: list[list[int] | None] = [None] * len(jobs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            p, a = jobs[i]
            got[i] = rt.complete(p, a, **GREEDY).tokens
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert got == expected
    assert len({tuple(e) for e in expected}) > 3


def test_load_and_unload_while_other_contexts_decode(world):
    """llama.cpp's adapter init/free edit the model's adapter set, which every context iterates
    while it sizes its graph: 3 contexts decode continuously (each call checked against its
    sequential output) while another thread loads and unloads adapters hundreds of times."""
    rt = world.rt
    sets = [{}, {"sql": 1.0}, {"tone": 0.8}]
    jobs = [(p, a) for p in PROMPTS[:2] for a in sets]
    expected = {i: rt.complete(p, a, **GREEDY).tokens for i, (p, a) in enumerate(jobs)}
    stop = threading.Event()
    errors: list[BaseException] = []
    done = {"decodes": 0, "swaps": 0}

    def decode(k: int) -> None:
        try:
            i = k
            while not stop.is_set():
                p, a = jobs[i % len(jobs)]
                assert rt.complete(p, a, **GREEDY).tokens == expected[i % len(jobs)], (p, a)
                done["decodes"] += 1
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            stop.set()

    def swap() -> None:
        try:
            for n in range(300):
                rt.load_adapter(f"churn{n % 3}", world.ggufs[("sql", "tone", "style")[n % 3]])
                if n % 2:
                    rt.unload_adapter(f"churn{(n - 1) % 3}")
                done["swaps"] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=decode, args=(k,)) for k in range(3)] + [threading.Thread(target=swap)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for name in [n for n in rt.adapters if n.startswith("churn")]:
        rt.unload_adapter(name)
    assert not errors, errors
    assert done["swaps"] == 300 and done["decodes"] >= 3, done
    print(f"load/unload under decode {world.case}: {done['swaps']} loads, {done['decodes']} checked decodes")


def test_unload_while_streaming(world):
    rt = world.rt
    rt.load_adapter("tmp", world.ggufs["sql"])
    stream = rt.stream(PROMPTS[2], {"tmp": 1.0}, **GREEDY)
    first = next(stream)
    rt.unload_adapter("tmp")  # in use: freed when the stream ends
    rest = "".join(stream)
    assert first + rest == rt.complete(PROMPTS[2], {"sql": 1.0}, **GREEDY).text
    with pytest.raises(UnknownAdapterError):
        rt.complete(PROMPTS[2], {"tmp": 1.0}, **GREEDY)


def test_bad_options_and_prompts(world):
    rt = world.rt
    with pytest.raises(InvalidRequestError, match="temperature") as err:
        rt.complete("x", temperature=-1, top_p=2.0)
    assert "top_p" in str(err.value)  # every problem at once
    with pytest.raises(InvalidRequestError, match="unknown generation option 'bogus_option'; the options are max_tokens"):
        rt.complete("x", bogus_option=1)
    with pytest.raises(InvalidRequestError, match="unknown"):
        rt.session(bogus_option=1)
    with pytest.raises(InvalidRequestError, match="scale must be a finite number"):
        rt.complete("x", {"sql": float("nan")})
    with pytest.raises(ContextOverflowError, match="context holds 2048"):
        rt.complete("word " * 3000, max_tokens=4)
    with pytest.raises(InvalidRequestError, match="role"):
        rt.chat([{"role": "robot", "content": "x"}])
    with pytest.raises(InvalidRequestError, match="token ids"):
        rt.logits([rt.n_vocab + 5])
    assert rt.complete("still fine", **GREEDY).completion_tokens >= 1


def test_snapshot_store_threshold_holds_when_empty():
    """An empty store is still a store: dropping a few tokens must not snapshot the whole KV."""
    from edge_lora.runtime.kv import SnapshotStore

    from edge_lora.runtime.kv import Segment

    store = SnapshotStore(1 << 20, min_tokens=32)
    assert len(store) == 0
    store.put([Segment((), tuple(range(10)))], b"x" * 100)  # under min_tokens: not kept
    assert len(store) == 0
    history = (Segment((), tuple(range(40))),)
    store.put(history, b"y" * 100)
    snap = store.best((Segment((), tuple(range(35)) + (99,)),))
    assert (snap.n, snap.segments, snap.state) == (35, history, b"y" * 100)
