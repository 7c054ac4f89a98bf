"""Hooks desktop apps need: load progress, memory figures, cancelling a call from another thread."""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest
from adapters import make_peft_adapter
from tiny_models import TOKENS

from edge_lora import CancelledError, CancelToken, Runtime
from edge_lora_convert import convert


@pytest.fixture(scope="module")
def rt(tiny, tmp_path_factory):
    t = tiny("llama2")
    d = tmp_path_factory.mktemp("hooks")
    make_peft_adapter(t.model, d / "a", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    convert(d / "a", base=t.base_path, out=d / "a.gguf")
    with Runtime(t.base_path, n_ctx=256, n_parallel=2) as rt:
        rt.load_adapter("a", d / "a.gguf")
        yield rt


def test_load_progress_reports_and_cancels(tiny):
    base = tiny("llama2").base_path
    seen: list[float] = []
    with Runtime(base, n_ctx=64, on_load_progress=seen.append):
        pass
    assert seen and seen[-1] == 1.0 and seen == sorted(seen) and all(0.0 <= f <= 1.0 for f in seen)
    with pytest.raises(CancelledError, match="cancelled by the progress callback"):
        Runtime(base, n_ctx=64, on_load_progress=lambda f: False)

    def boom(f: float) -> None:
        raise RuntimeError("from the callback")

    with pytest.raises(RuntimeError, match="from the callback"):
        Runtime(base, n_ctx=64, on_load_progress=boom)
    with Runtime(base, n_ctx=64) as again:  # nothing was left half-loaded
        assert again.complete("tok1", max_tokens=2, temperature=0.0).completion_tokens >= 1


def test_memory_figures(tiny, caplog):
    t = tiny("llama2")
    caplog.set_level(logging.DEBUG, logger="edge_lora.engine.native")
    with Runtime(t.base_path, n_ctx=256, n_parallel=2, kv_type="f16") as rt:
        m = rt.memory()
        # llama.cpp's own figure for each context's KV buffer (both sequences in one), from its log
        logged = [float(x) for x in re.findall(r"KV buffer size =\s*([0-9.]+) MiB", caplog.text)]
        assert logged and abs(sum(logged) - 2 * m.kv_per_context / 2**20) < 0.01 * len(logged), (logged, m)  # 2 decimals each
        assert m.contexts == 2 and m.model_mapped == rt.base_info.tensor_bytes()
        assert m.adapters == 0 and m.snapshots == 0
        rt.complete("tok1 tok2 tok3", max_tokens=4, temperature=0.0)
        m = rt.memory()
        assert m.model_resident is not None and 0 < m.model_resident <= m.model_mapped + 2 * 4096
        assert m.total == m.model_mapped + 2 * m.kv_per_context + m.adapters + m.snapshots


def test_memory_counts_adapters_and_snapshots(rt):
    m0 = rt.memory()
    assert m0.adapters == rt.adapters["a"].size_bytes
    words = "tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8"  # some 60 tokens: snapshots keep >= 32
    assert 32 < len(rt.tokenize(words)) < 100
    session = rt.session({"a": 1.0})
    session.send(words, max_tokens=2, temperature=0.0)
    s = rt.session({})
    s.send(words, max_tokens=2, temperature=0.0)
    rt.complete(words, {"a": 0.5}, max_tokens=2, temperature=0.0)  # other sets: the sessions' KV is stashed
    session.send("again", max_tokens=2, temperature=0.0)
    assert rt.memory().snapshots == rt.snapshots.bytes_used > 0


def test_cancel_from_another_thread_stops_within_a_token(rt):
    full = rt.complete("tok1 tok2", {"a": 1.0}, max_tokens=200, temperature=0.0)
    token = CancelToken()
    pieces: list[str] = []

    def cancel_after_5():
        while len(pieces) < 5:
            time.sleep(0.001)
        token.cancel()

    threading.Thread(target=cancel_after_5).start()
    stream = rt.stream("tok1 tok2", {"a": 1.0}, max_tokens=200, temperature=0.0, cancel=token)
    for p in stream:
        pieces.append(p)
    c = stream.result
    assert c.finish_reason == "cancelled" and 5 <= c.completion_tokens < full.completion_tokens
    assert full.text.startswith(c.text)
    # the runtime and its KV are still right
    assert rt.complete("tok1 tok2", {"a": 1.0}, max_tokens=200, temperature=0.0).text == full.text


def test_cancel_during_the_prompt_and_logits(rt):
    token = CancelToken()
    token.cancel()
    long_prompt = "tok5 tok6 " * 12
    c = rt.complete(long_prompt, {"a": 1.0}, max_tokens=5, temperature=0.0, cancel=token)
    assert c.finish_reason == "cancelled" and c.text == "" and c.completion_tokens == 0
    with pytest.raises(CancelledError):
        rt.logits(TOKENS, {"a": 1.0}, cancel=token)
    ref = rt.logits(TOKENS, {"a": 1.0})
    assert np.array_equal(rt.logits(TOKENS, {"a": 1.0}, cancel=CancelToken()), ref)
    assert rt.complete(long_prompt, {"a": 1.0}, max_tokens=5, temperature=0.0).finish_reason in ("stop", "length")


def test_close_while_other_threads_generate(tiny):
    """close() from the UI thread while calls run: they stop at their next token (cancelled), a
    waiting call is refused, nothing crashes."""
    rt = Runtime(tiny("llama2").base_path, n_ctx=256, n_parallel=2)
    results: dict[int, str] = {}
    started = threading.Barrier(4)

    def call(i: int) -> None:
        started.wait()
        try:
            results[i] = rt.complete("tok1 tok2", max_tokens=200, temperature=0.0, repeat_penalty=1.0).finish_reason
        except Exception as exc:  # noqa: BLE001 - the type is what is checked
            results[i] = type(exc).__name__

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.02)
    rt.close()
    for t in threads:
        t.join()
    assert set(results.values()) <= {"cancelled", "length", "stop", "InvalidRequestError"}, results
    with pytest.raises(Exception, match="closed"):
        rt.complete("tok1", max_tokens=2)


def test_cancel_while_waiting_for_a_context(rt):
    """Both contexts busy: a third call waits; its token stops the wait (within the 0.1 s poll)
    and it comes back cancelled, having evaluated nothing; the busy calls are not disturbed."""
    held = [rt.stream("tok1 tok2", {"a": 1.0}, max_tokens=50, temperature=0.0) for _ in range(2)]
    for s in held:
        next(s)  # each now holds a context
    assert rt.busy_contexts == 2
    token, out = CancelToken(), {}

    def waiting_call() -> None:
        out["c"] = rt.complete("tok3 tok4", max_tokens=5, temperature=0.0, cancel=token)
        out["t"] = time.monotonic()

    t = threading.Thread(target=waiting_call)
    t.start()
    time.sleep(0.3)
    assert "c" not in out  # still waiting
    cancelled_at = time.monotonic()
    token.cancel()
    t.join(timeout=5)
    c = out["c"]
    assert c.finish_reason == "cancelled" and c.completion_tokens == 0 and c.cached_tokens == 0
    assert out["t"] - cancelled_at < 0.5
    for s in held:
        assert s.consume().finish_reason in ("stop", "length")
    assert rt.busy_contexts == 0


def test_unloading_an_adapter_drops_its_snapshots(tiny, tmp_path):
    t = tiny("llama2")
    for name, seed in (("a", 1), ("b", 2)):
        make_peft_adapter(t.model, tmp_path / name, dict(r=4, lora_alpha=8, target_modules=["q_proj"]), seed=seed)
        convert(tmp_path / name, base=t.base_path, out=tmp_path / f"{name}.gguf")
    words = "tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8"  # long enough to be kept (>= 32 tokens)
    with Runtime(t.base_path, n_ctx=256) as rt:
        for name in ("a", "b"):
            rt.load_adapter(name, tmp_path / f"{name}.gguf")
        uid = {n: i.uid for n, i in rt.adapters.items()}
        for mix in ({"a": 1.0}, {"b": 1.0}, {}):  # each switch stashes the previous set's KV
            rt.complete(words, mix, max_tokens=2, temperature=0.0)

        def holders() -> set[int]:
            return {u for history in rt.snapshots.histories() for seg in history for _, u, _ in seg.key}

        assert holders() == {uid["a"], uid["b"]}
        used = rt.snapshots.bytes_used
        rt.unload_adapter("a")
        assert holders() == {uid["b"]} and 0 < rt.snapshots.bytes_used < used
        assert rt.memory().snapshots == rt.snapshots.bytes_used
