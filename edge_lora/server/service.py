"""The protocol-neutral service under every wire protocol.

A protocol (OpenAI's chat and completions today) maps its request onto three things: a model
id or an adapter mix (:meth:`Service.adapters_for`), generation options (the runtime's one
schema, :class:`~edge_lora.runtime.request.SamplingParams`; :meth:`Service.options` adds the
server's own limits) and a prompt or messages. :meth:`Service.start` validates all of it
before anything is sent, then returns a :class:`Generation`: the call's
:class:`~edge_lora.CancelToken` and its pieces as an async iterator. The token is cancelled
when the client goes away, so the runtime stops the call wherever it is: waiting for a
context, inside a prompt evaluation (llama.cpp's abort callback) or between tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..cancel import CancelToken
from ..runtime.reasoning import Thought
from ..runtime.request import Completion, GenerationRequest
from .errors import ApiError

if TYPE_CHECKING:  # the runtime loads the native engine; the service only calls it
    from ..runtime.runtime import Runtime, TextStream


@dataclass(frozen=True)
class ServerSettings:
    model_id: str
    api_key: str | None = None
    adapter_dirs: tuple[Path, ...] = ()
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512
    #: origins a browser may call from (CORS); empty: none
    cors_origins: tuple[str, ...] = ()
    #: serve Ollama's API under /api/ too
    ollama: bool = True
    #: serve the web page at / (:mod:`.web`)
    web: bool = True
    #: converts a PEFT / MLX-LM checkpoint named by ``load_lora_adapter`` to a GGUF adapter (``serve``
    #: gives :class:`edge_lora.cli.checkpoints.ConvertedAdapters`); None: checkpoints are refused
    checkpoints: CheckpointConverter | None = None


class Converted(Protocol):
    path: Path  # the GGUF adapter
    source: tuple[Path, ...]  # the checkpoint's files it came from
    cached: bool  # found, not converted now
    notes: list[str]


class CheckpointConverter(Protocol):
    def gguf_for(self, checkpoint: Path) -> Converted:
        """The GGUF adapter of ``checkpoint``; raises :class:`~edge_lora.errors.CheckpointError` or
        :class:`~edge_lora.errors.MissingDependencyError`."""
        ...


class Generation:
    """One generation in flight: ``token`` cancels it; :meth:`pieces` yields its text, then
    ``result`` holds the :class:`~edge_lora.Completion`."""

    def __init__(self, stream: TextStream, token: CancelToken, executor: ThreadPoolExecutor) -> None:
        self.token = token
        self.result: Completion | None = None
        self._stream = stream
        self._executor = executor

    @property
    def abandoned(self) -> bool:
        """Cancelled because the client went away (nobody to answer)."""
        return self.token.cancelled

    def cancel(self) -> None:
        self.token.cancel()

    async def pieces(self) -> AsyncIterator[str]:
        """The text pieces, generated on the executor. Leaving the iteration early (a client that
        disconnects cancels the task iterating) cancels the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stream = self._stream

        def put(item: tuple[str, object]) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def worker() -> None:
            try:
                for piece in stream:
                    put(("piece", piece))
                put(("done", stream.result))
            except BaseException as exc:  # noqa: BLE001 - forwarded to the protocol
                put(("error", exc))
            finally:
                stream.close()  # frees the context at once

        loop.run_in_executor(self._executor, worker)
        finished = False
        try:
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    finished = True
                    raise value  # type: ignore[misc]
                else:
                    finished = True
                    self.result = value  # type: ignore[assignment]
                    return
        finally:
            if not finished:
                self.cancel()

    async def collect(self, is_disconnected: Callable[[], Awaitable[bool]]) -> str:
        """The whole answer (a thought's pieces left out: they are in ``result.reasoning_content``);
        the generation is cancelled as soon as ``is_disconnected()`` says so."""
        parts: list[str] = []

        async def drain() -> None:
            async for piece in self.pieces():
                if not isinstance(piece, Thought):
                    parts.append(piece)

        task = asyncio.ensure_future(drain())
        while not task.done():
            await asyncio.wait([task], timeout=0.05)
            if not task.done() and await is_disconnected():
                self.cancel()
        await task
        return "".join(parts)


class Service:
    """What every protocol needs of the runtime, with the server's settings applied."""

    def __init__(self, rt: Runtime, settings: ServerSettings, executor: ThreadPoolExecutor) -> None:
        self.rt = rt
        self.settings = settings
        self.executor = executor

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run a blocking runtime call on the executor."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kw))

    def model_ids(self) -> list[str]:
        return [self.settings.model_id, *self.rt.adapters]

    def adapters_for(self, model: str, mix: Mapping[str, float | None] | None) -> dict[str, float | None]:
        """The adapters of a call: the base's id with an optional mix of adapters and scales, or
        one adapter's name (at its default scale). Raises :class:`ApiError` 404 or 400."""
        if model == self.settings.model_id:
            return dict(mix or {})
        if mix is not None:
            raise ApiError(400, f"'adapters' mixes apply to the base model: set model to {self.settings.model_id!r}",
                           param="adapters")
        if model not in self.rt.adapters:
            raise ApiError(404, f"the model {model!r} does not exist; models: {', '.join(self.model_ids())}",
                           param="model", code="model_not_found")
        return {model: None}

    def options(self, max_tokens: int | None, **options: Any) -> dict[str, Any]:
        """Generation options for the runtime (``None``: the default), with this server's
        ``max_tokens`` default and limit. Their ranges are the runtime's (:class:`SamplingParams`)."""
        n = self.settings.default_max_tokens if max_tokens is None else max_tokens
        if n > self.settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens {n} is over this server's limit of {self.settings.max_tokens_limit}",
                           param="max_tokens")
        return {"max_tokens": n, **{k: v for k, v in options.items() if v is not None}}

    async def start(self, *, adapters: Mapping[str, float | None], options: Mapping[str, Any],
                    messages: Sequence[Mapping[str, Any]] | None = None, prompt: str | None = None) -> Generation:
        """Validate the call (adapters, options, prompt length: errors raise here, before any
        response is sent) and return it ready to run, its :class:`CancelToken` wired in."""
        token = CancelToken()
        request = GenerationRequest.of(prompt=prompt, messages=messages, adapters=dict(adapters), cancel=token, **options)
        stream = await self.call(self.rt.start, request)
        return Generation(stream, token, self.executor)
