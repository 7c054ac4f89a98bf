"""The OpenAI-compatible server, as a real process on loopback, with the official client."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import numpy as np
import pytest
from adapters import make_peft_adapter
from serving import serve

from edge_lora import Runtime
from edge_lora_convert import convert

KEY = "test-key"
GREEDY = dict(temperature=0.0, max_tokens=10)
PROMPTS = ["hello there", "tok1 tok2 tok3", "the cat sat", "1 2 3 4 5", "once upon", "why is the sky"]


@dataclass
class Server:
    url: str
    base: Path
    adapters: dict[str, Path]
    adapter_dir: Path
    proc: subprocess.Popen
    model_id: str

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, body: object, key: str | None = KEY, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kw)


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    t = tiny("qwen3")
    adir = tmp / "adapters"
    adir.mkdir()
    paths = {}
    for i, name in enumerate(("sql", "tone", "style", "spare")):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=40 + i)
        paths[name] = adir / f"{name}.gguf"
        convert(tmp / name, base=t.base_path, out=paths[name])
    args = [str(t.base_path), "--api-key", KEY, "--adapter-dir", str(adir), "--parallel", "3", "--n-ctx", "2048",
            "--max-tokens-limit", "1500", "--max-body-bytes", "65536"]
    for name in ("sql", "tone", "style"):
        args += ["--adapter", f"{name}={paths[name]}"]
    with serve(args) as (url, proc):
        yield Server(url, t.base_path, paths, adir, proc, t.base_path.name.removesuffix(".gguf"))


@pytest.fixture(scope="module")
def reference(server) -> Iterator[Runtime]:
    """The same files in-process: what a lone request must produce."""
    rt = Runtime(server.base, n_ctx=2048)
    for name in ("sql", "tone", "style"):
        rt.load_adapter(name, server.adapters[name])
    yield rt
    rt.close()


def _mix(model: str, server: Server) -> dict:
    return {} if model == server.model_id else {model: 1.0}


def test_models_lists_base_and_adapters(server):
    models = server.client().models.list().data
    ids = [m.id for m in models]
    assert ids[0] == server.model_id and set(ids[1:]) >= {"sql", "tone", "style"}
    by_id = {m.id: m for m in models}
    assert by_id["sql"].model_extra["parent"] == server.model_id
    assert by_id[server.model_id].model_extra["parent"] is None


def test_chat_plain_and_streaming(server, reference):
    client = server.client()
    msgs = [{"role": "user", "content": "hello there"}]
    want = reference.chat(msgs, {"sql": 1.0}, **GREEDY)
    r = client.chat.completions.create(model="sql", messages=msgs, **GREEDY)
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == want.completion_tokens
    chunks = list(client.chat.completions.create(model="sql", messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == want.completion_tokens and chunks[-1].choices == []
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason


def test_completions_and_mix(server, reference):
    client = server.client()
    want = reference.complete("the cat sat", {"tone": 1.0}, **GREEDY)
    r = client.completions.create(model="tone", prompt="the cat sat", **GREEDY)
    assert r.choices[0].text == want.text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tone", prompt="the cat sat", stream=True, **GREEDY))
    assert streamed == want.text
    mix = {"sql": 0.6, "style": -0.3}
    want_mix = reference.chat([{"role": "user", "content": "hi"}], mix, **GREEDY)
    r = client.chat.completions.create(model=server.model_id, messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"adapters": mix}, **GREEDY)
    assert r.choices[0].message.content == want_mix.text


def _err(resp: httpx.Response) -> dict:
    return resp.json()["error"]


def test_auth(server):
    body = {"model": "sql", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert httpx.get(server.url + "/health").status_code == 200
    for key in (None, "wrong"):
        r = server.post("/v1/chat/completions", body, key=key)
        assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()


def test_validation_errors(server):
    chat = {"model": "sql", "messages": [{"role": "user", "content": "x"}]}
    cases = [
        ({**chat, "temperature": -1}, 400, "temperature"),
        ({**chat, "bogus": 1}, 400, "bogus"),
        ({**chat, "max_tokens": 5000}, 400, "max_tokens"),
        ({**chat, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        ({**chat, "model": "nope"}, 404, "model"),
        ({**chat, "adapters": {"tone": 1.0}}, 400, "adapters"),
        ({**chat, "model": server.model_id, "adapters": {"nope": 1.0}}, 404, "model"),
        ({**chat, "n": 17}, 400, "n"),
        ({**chat, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
    ]
    for body, status, param in cases:
        r = server.post("/v1/chat/completions", body)
        assert r.status_code == status, (body, r.text)
        assert _err(r)["param"] == param, r.text
        assert _err(r)["message"]
    r = server.post("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert _err(r)["code"] == "context_length_exceeded"
    r = server.post("/v1/completions", {"model": "sql", "prompt": "x" * 70000})
    assert r.status_code == 413
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_load_and_unload(server, reference, tmp_path):
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(server.adapters["spare"].read_bytes())
    (server.adapter_dir / "link.gguf").symlink_to(outside)
    (server.adapter_dir / "junk.gguf").write_bytes(b"not gguf at all")
    refused = [
        ({"lora_name": "x", "lora_path": "../outside.gguf"}, 403),
        ({"lora_name": "x", "lora_path": str(outside)}, 403),
        ({"lora_name": "x", "lora_path": "link.gguf"}, 403),
        ({"lora_name": "x", "lora_path": "junk.gguf"}, 400),
        ({"lora_name": "x", "lora_path": "missing.gguf"}, 400),
        ({"lora_name": "sql", "lora_path": "spare.gguf"}, 400),
        ({"lora_name": "x"}, 400),
    ]
    for body, status in refused:
        r = server.post("/v1/load_lora_adapter", body)
        assert r.status_code == status, (body, r.text)
    r = server.post("/v1/load_lora_adapter", {"lora_name": "spare", "lora_path": "spare.gguf"})
    assert r.status_code == 200, r.text
    client = server.client()
    assert "spare" in [m.id for m in client.models.list().data]
    reference.load_adapter("spare", server.adapters["spare"])
    want = reference.complete("once upon", {"spare": 1.0}, **GREEDY).text
    assert client.completions.create(model="spare", prompt="once upon", **GREEDY).choices[0].text == want
    assert server.post("/v1/unload_lora_adapter", {"lora_name": "spare"}).status_code == 200
    assert server.post("/v1/unload_lora_adapter", {"lora_name": "spare"}).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="spare", prompt="once upon", **GREEDY)


def test_an_alora_is_served_by_name(server, reference, tiny, tmp_path):
    """An aLoRA loaded at run time: served by name from its invocation on (what the in-process
    runtime gives), listed with its invocation, and a prompt without the invocation is a 400."""
    t = tiny("qwen3")
    cfg = dict(r=8, lora_alpha=16, target_modules="all-linear", alora_invocation_tokens=[67, 38])  # "@#"
    make_peft_adapter(t.model, tmp_path / "al", cfg, seed=77)
    convert(tmp_path / "al", base=t.base_path, out=server.adapter_dir / "al.gguf")
    r = server.post("/v1/load_lora_adapter", {"lora_name": "al", "lora_path": "al.gguf"})
    assert r.status_code == 200, r.text
    try:
        client = server.client()
        listed = {m.id: m.model_extra for m in client.models.list().data}
        assert listed["al"]["alora_invocation_tokens"] == [67, 38] and listed["al"]["alora_invocation_string"] == "@#"
        assert "alora_invocation_tokens" not in listed["sql"]
        reference.load_adapter("al", server.adapter_dir / "al.gguf")
        prompt = "the cat sat on the mat. @# answer:"
        want = reference.complete(prompt, {"al": 1.0}, **GREEDY)
        assert want.text != reference.complete(prompt, **GREEDY).text  # the aLoRA changes the answer
        assert client.completions.create(model="al", prompt=prompt, **GREEDY).choices[0].text == want.text
        r = server.post("/v1/completions", {"model": "al", "prompt": "no invocation here", "max_tokens": 2})
        assert r.status_code == 400 and _err(r)["param"] == "adapters", r.text
        assert "'al': its invocation tokens [67, 38] are not in the prompt" in _err(r)["message"]
    finally:
        assert server.post("/v1/unload_lora_adapter", {"lora_name": "al"}).status_code == 200
        reference.unload_adapter("al")


def _stream_text(server: Server, model: str, prompt: str, errors: list, out: dict, key: int) -> None:
    try:
        chunks = server.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True, **GREEDY)
        out[key] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    except Exception as exc:  # noqa: BLE001 - counted below
        errors.append(repr(exc))


def _a_tie_explains(reference, messages: list, mix: dict, want, got: str, tol: float = 1e-3) -> bool:
    """Whether ``got`` (a streamed text) leaves ``want`` (the lone greedy run's Completion) where the
    reference's two best logits are within ``tol``: a step decoded in a batch rounds otherwise than
    alone (llama.cpp's CPU products take another kernel from two rows on), which may flip a tie."""
    k = 0
    while k < len(want.tokens) and got.startswith(reference.detokenize(want.tokens[: k + 1])):
        k += 1
    if k == len(want.tokens):
        return False  # not a divergence at a token: something else differs
    ids = reference.chat_tokens(messages, mix) + want.tokens[:k]
    top = np.sort(reference.logits(ids, mix)[-1])[-2:]
    return bool(top[1] - top[0] < tol)


def test_load_32_concurrent_streams(server, reference):
    """32 streaming requests over 3 adapters and the base at once, each equal to its lone greedy run
    (or leaving it only at a tie, see :func:`_a_tie_explains`), while another adapter is loaded and
    unloaded."""
    models = [server.model_id, "sql", "tone", "style"]
    jobs = [(models[i % 4], PROMPTS[i % len(PROMPTS)]) for i in range(32)]
    lone = {i: reference.chat([{"role": "user", "content": p}], _mix(m, server), **GREEDY) for i, (m, p) in enumerate(jobs)}
    want = {i: c.text for i, c in lone.items()}
    errors: list = []
    got: dict = {}
    threads = [threading.Thread(target=_stream_text, args=(server, m, p, errors, got, i)) for i, (m, p) in enumerate(jobs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for _ in range(3):  # hot load/unload while the streams run
        assert server.post("/v1/load_lora_adapter", {"lora_name": "spare", "lora_path": "spare.gguf"}).status_code == 200
        assert server.post("/v1/unload_lora_adapter", {"lora_name": "spare"}).status_code == 200
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - t0
    assert errors == []
    assert set(got) == set(want)
    ties = [i for i in want if got[i] != want[i]]
    for i in ties:
        m, p = jobs[i]
        assert _a_tie_explains(reference, [{"role": "user", "content": p}], _mix(m, server), lone[i], got[i]), (
            i, m, p, want[i], got[i])
    print(f"load test: 32 streams, 0 errors, {len(ties)} left their lone run at a tie, {elapsed:.2f} s")


def test_disconnect_frees_the_slot(server):
    body = {"model": "sql", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
            "temperature": 0.0, "stream": True}
    # calibrate: how long does the full generation take?
    t0 = time.perf_counter()
    full = server.post("/v1/chat/completions", {**body, "stream": False})
    full_s = time.perf_counter() - t0
    assert full.status_code == 200
    n_full = full.json()["usage"]["completion_tokens"]
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and "content" in line:
                break
    t_gone = time.perf_counter()
    while httpx.get(server.url + "/health").json()["slots"]["busy"] > 0:
        assert time.perf_counter() - t_gone < 10, "slot still busy after the client left"
        time.sleep(0.01)
    released = time.perf_counter() - t_gone
    if n_full >= 1000:  # only meaningful when the full run is long
        assert released < full_s / 2, (released, full_s)
    print(f"disconnect: slot free after {released * 1000:.0f} ms; full generation {full_s * 1000:.0f} ms")


def test_non_streaming_disconnect_frees_the_slot(server):
    body = {"model": "tone", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1500,
            "temperature": 0.0}
    t0 = time.perf_counter()
    full = server.post("/v1/chat/completions", body)
    full_s = time.perf_counter() - t0
    assert full.status_code == 200
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=full_s / 10)
    t_gone = time.perf_counter()
    while httpx.get(server.url + "/health").json()["slots"]["busy"] > 0:
        assert time.perf_counter() - t_gone < 10, "slot still busy after the client left"
        time.sleep(0.01)
    released = time.perf_counter() - t_gone
    if full.json()["usage"]["completion_tokens"] >= 1000:
        assert released < full_s / 2, (released, full_s)
    print(f"non-streaming disconnect: slot free after {released * 1000:.0f} ms; full generation {full_s * 1000:.0f} ms")


def test_non_finite_adapters_and_overflowing_scales(server, tmp_path):
    """A GGUF adapter with NaN factors is refused by the load endpoint (400, naming the tensor); a
    scale that overflows the logits is a 422, not garbage text; the server stays usable."""
    import gguf
    from gguf_edit import poison_tensor

    bad = server.adapter_dir / "nan.gguf"
    bad.write_bytes(server.adapters["spare"].read_bytes())
    name = next(t.name for t in gguf.GGUFReader(bad).tensors if t.name.endswith(".lora_b"))
    poison_tensor(bad, name)
    r = server.post("/v1/load_lora_adapter", {"lora_name": "nan", "lora_path": "nan.gguf"})
    assert r.status_code == 400 and name in _err(r)["message"] and "NaN" in _err(r)["message"], r.text
    assert "nan" not in [m.id for m in server.client().models.list().data]
    body = {"model": server.model_id, "prompt": "once upon", "max_tokens": 4, "temperature": 0.0, "adapters": {"sql": 1e38}}
    r = server.post("/v1/completions", body)
    assert r.status_code == 422 and _err(r)["code"] == "non_finite_logits", r.text
    ok = server.client().completions.create(model="sql", prompt="once upon", **GREEDY)
    assert ok.choices[0].text
