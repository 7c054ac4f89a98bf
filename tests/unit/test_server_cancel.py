"""The server ties each call's CancelToken to its client's connection.

A real uvicorn server on loopback serves the real app (``create_app``) over a stand-in runtime
whose one context and prompt evaluation are slow on purpose: evaluating a prompt waits, polling
the call's token as llama.cpp's abort callback polls it between graph nodes, for up to 20 s.
A client that disconnects must stop the call within a poll (here: within 1 s, generous for a
loaded machine; the poll is 10 ms), whether it is streaming or not, evaluating the prompt or
still waiting for the context, and the context must be free again.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from edge_lora.cancel import CancelToken  # noqa: E402
from edge_lora.runtime.request import (  # noqa: E402
    Completion,
    GenerationRequest,
    SamplingParams,
    TextStream,
    Timings,
)
from edge_lora.server import ServerSettings, create_app  # noqa: E402

PROMPT_SECONDS = 20.0  # a prompt evaluation that nobody waits out
CANCEL_WITHIN = 1.0


class SlowRuntime:
    """The part of :class:`edge_lora.Runtime` the server uses, with one slow context."""

    n_parallel = 1
    adapters: dict = {}

    def __init__(self) -> None:
        self.slot = threading.Semaphore(1)
        self.events: list[tuple[str, float]] = []  # (what, time.monotonic())
        self.tokens: list[CancelToken | None] = []

    @property
    def busy_contexts(self) -> int:
        return 0 if self.slot._value else 1  # noqa: SLF001 - a stand-in's own semaphore

    def _note(self, what: str) -> None:
        self.events.append((what, time.monotonic()))

    def start(self, request: GenerationRequest) -> TextStream:
        assert isinstance(request.params, SamplingParams)  # the server sends the runtime's one schema
        self.tokens.append(request.cancel)
        return TextStream(self._run(request.cancel))

    def _run(self, cancel: CancelToken | None) -> Iterator[str]:
        t = Timings(0.0, 0.0, 0.0, 0.0)
        while not self.slot.acquire(timeout=0.01):  # ContextPool.lease: waits, polling the token
            if cancel is not None and cancel.cancelled:
                self._note("cancelled waiting")
                return Completion("", [], "cancelled", 1, 0, 0, {}, t)
        try:
            self._note("prompt started")
            deadline = time.monotonic() + PROMPT_SECONDS
            while time.monotonic() < deadline:  # the prompt evaluation, aborted between graph nodes
                if cancel is not None and cancel.cancelled:
                    self._note("cancelled in prompt")
                    return Completion("", [], "cancelled", 1, 0, 0, {}, t)
                time.sleep(0.01)
            yield "never reached"
            return Completion("x", [1], "length", 1, 1, 0, {}, t)
        finally:
            self.slot.release()
            self._note("slot freed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def served() -> Iterator[tuple[str, SlowRuntime]]:
    rt = SlowRuntime()
    app = create_app(rt, ServerSettings(model_id="base"))  # type: ignore[arg-type]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=0.5)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url, rt
    server.should_exit = True
    thread.join(timeout=10)
    app.state.executor.shutdown(wait=False, cancel_futures=True)


def _wait_for(rt: SlowRuntime, what: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w, t in rt.events:
            if w == what:
                return t
        time.sleep(0.005)
    raise AssertionError(f"{what!r} did not happen within {timeout} s; events: {rt.events}")


BODY = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _disconnect_after_prompt_starts(url: str, rt: SlowRuntime, stream: bool) -> float:
    """Send a request, drop the connection once the prompt evaluation runs; the time dropped."""
    async with httpx.AsyncClient(timeout=30) as client:
        task = asyncio.ensure_future(client.post(url + "/v1/chat/completions", json={**BODY, "stream": stream}))
        while not any(w == "prompt started" for w, _ in rt.events):
            await asyncio.sleep(0.005)
        task.cancel()  # closes the connection
        dropped = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
    return dropped


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_a_client_that_disconnects_during_the_prompt_stops_it(served, stream):
    url, rt = served
    dropped = asyncio.run(_disconnect_after_prompt_starts(url, rt, stream))
    cancelled = _wait_for(rt, "cancelled in prompt", CANCEL_WITHIN + 2)
    print(f"cancel latency ({'streaming' if stream else 'plain'}, in the prompt): {cancelled - dropped:.3f} s")
    assert cancelled - dropped < CANCEL_WITHIN
    assert _wait_for(rt, "slot freed", 1) - dropped < CANCEL_WITHIN
    assert httpx.get(url + "/health").json()["slots"] == {"total": 1, "busy": 0}
    assert len(rt.tokens) == 1 and rt.tokens[0] is not None and rt.tokens[0].cancelled


def test_a_client_that_disconnects_while_waiting_for_a_context_is_never_run(served):
    url, rt = served

    async def scenario() -> float:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.ensure_future(client.post(url + "/v1/chat/completions", json=BODY))
            while not any(w == "prompt started" for w, _ in rt.events):
                await asyncio.sleep(0.005)
            second = asyncio.ensure_future(client.post(url + "/v1/chat/completions", json={**BODY, "stream": True}))
            while len(rt.tokens) < 2:  # the second call is in the runtime, waiting for the context
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            second.cancel()
            dropped = time.monotonic()
            await asyncio.sleep(CANCEL_WITHIN)
            first.cancel()
            for t in (first, second):
                with pytest.raises(asyncio.CancelledError):
                    await t
            return dropped

    dropped = asyncio.run(scenario())
    waited = _wait_for(rt, "cancelled waiting", 1) - dropped
    print(f"cancel latency (streaming, waiting for the context): {waited:.3f} s")
    assert waited < CANCEL_WITHIN
    assert [w for w, _ in rt.events].count("prompt started") == 1  # the second never evaluated anything
    _wait_for(rt, "cancelled in prompt", 2)
