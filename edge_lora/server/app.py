"""OpenAI-compatible local server: the base and each adapter are models (vLLM's convention).

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (plain and SSE streaming, with usage), ``POST
/v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter`` (vLLM's names).
Library errors become HTTP statuses and OpenAI-style error bodies here only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from .._version import __version__
from ..errors import (
    ContextOverflowError,
    EdgeLoraError,
    NonFiniteLogitsError,
    GGUFFileError,
    IncompatibleAdapterError,
    InvalidRequestError,
    UnknownAdapterError,
)
from ..runtime.runtime import Runtime, TextStream
from .schemas import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest, UnloadAdapterRequest


@dataclass(frozen=True)
class ServerSettings:
    model_id: str
    api_key: str | None = None
    adapter_dirs: tuple[Path, ...] = ()
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _error_for(exc: EdgeLoraError) -> ApiError:
    if isinstance(exc, UnknownAdapterError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (InvalidRequestError, IncompatibleAdapterError, GGUFFileError)):
        return ApiError(400, str(exc))
    if isinstance(exc, NonFiniteLogitsError):
        return ApiError(422, str(exc), param="adapters", code="non_finite_logits")
    return ApiError(500, str(exc), kind="server_error")


class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body over {self.limit} bytes", code="body_too_large")
            return message

        return await self.app(scope, limited, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        err = ApiError(413, f"request body over {self.limit} bytes", code="body_too_large")
        await err.response()(scope, receive, send)


def create_app(rt: Runtime, settings: ServerSettings) -> FastAPI:
    """The ASGI app serving ``rt``. The caller owns ``rt`` (and closes it)."""
    app = FastAPI(title="edge-lora", version=__version__)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="edge-lora")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EdgeLoraError)
    async def _lib_error(_req: Request, exc: EdgeLoraError) -> JSONResponse:
        return _error_for(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        text = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errs)
        return ApiError(400, text or "invalid request", param=param).response()

    def auth(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error",
                           code="invalid_api_key")

    async def call(fn: Callable, *args: Any, **kw: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kw))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_id, "adapters": len(rt.adapters),
                "slots": {"total": rt.n_parallel, "busy": rt.busy_contexts}}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict:
        data = [{"id": settings.model_id, "object": "model", "created": created, "owned_by": "edge-lora",
                 "root": settings.model_id, "parent": None}]
        for name, info in rt.adapters.items():
            data.append({"id": name, "object": "model", "created": created, "owned_by": "edge-lora",
                         "root": str(info.path), "parent": settings.model_id})
        return {"object": "list", "data": data}

    def mix_of(req: ChatCompletionRequest | CompletionRequest) -> dict[str, float | None]:
        if req.model == settings.model_id:
            return dict(req.adapters or {})
        if req.adapters is not None:
            raise ApiError(400, "'adapters' mixes apply to the base model: set model to "
                           f"{settings.model_id!r}", param="adapters")
        if req.model not in rt.adapters:
            raise ApiError(404, f"the model {req.model!r} does not exist; models: "
                           f"{', '.join([settings.model_id, *rt.adapters])}", param="model", code="model_not_found")
        return {req.model: None}

    def options(req: ChatCompletionRequest | CompletionRequest, field_max: int | None) -> dict[str, Any]:
        max_tokens = field_max or settings.default_max_tokens
        if max_tokens > settings.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {settings.max_tokens_limit}",
                           param="max_tokens")
        return dict(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                    min_p=req.min_p, repeat_penalty=req.repeat_penalty, seed=req.seed, stop=req.stop)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        mix = mix_of(req)
        opts = options(req, req.max_completion_tokens or req.max_tokens)
        msgs = [{"role": m.role, "content": m.content} for m in req.messages]
        stream: TextStream = await call(rt.chat_stream, msgs, mix, **opts)
        return await respond(req, stream, request, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(req: CompletionRequest, request: Request) -> Any:
        mix = mix_of(req)
        stream: TextStream = await call(rt.stream, req.prompt, mix, **options(req, req.max_tokens))
        return await respond(req, stream, request, chat=False)

    async def respond(req: ChatCompletionRequest | CompletionRequest, stream: TextStream, request: Request,
                      chat: bool) -> Any:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(stream, rid, req.model, chat, usage, pool), media_type="text/event-stream")
        text = await _collect(stream, request, pool)
        c = stream.result
        if c is None:  # the client went away: nobody to answer
            return JSONResponse({}, status_code=499)
        choice: dict[str, Any] = {"index": 0, "finish_reason": c.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": req.model, "choices": [choice], "usage": _usage(c)}

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(auth)])
    async def load_adapter(req: LoadAdapterRequest) -> dict:
        if not settings.adapter_dirs:
            raise ApiError(403, "loading adapters at runtime is off: start the server with --adapter-dir DIR",
                           param="lora_path", kind="permission_error")
        if req.lora_name == settings.model_id or req.lora_name in rt.adapters:
            raise ApiError(400, f"a model named {req.lora_name!r} is already loaded (unload it first)",
                           param="lora_name")
        path = allowed_path(req.lora_path, settings.adapter_dirs)
        info = await call(rt.load_adapter, req.lora_name, path, req.scale)
        return {"status": "ok", "lora_name": info.name, "lora_path": str(info.path), "ranks": info.ranks}

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(auth)])
    async def unload_adapter(req: UnloadAdapterRequest) -> dict:
        if req.lora_name not in rt.adapters:
            raise ApiError(404, f"no adapter named {req.lora_name!r} is loaded", param="lora_name",
                           code="model_not_found")
        await call(rt.unload_adapter, req.lora_name)
        return {"status": "ok", "lora_name": req.lora_name}

    app.state.runtime = rt
    app.state.executor = pool
    return app


def allowed_path(raw: str, dirs: tuple[Path, ...]) -> Path:
    """Resolve ``raw`` (absolute, or relative to an allowed folder) to a file inside one of ``dirs``.

    Symlinks are resolved first, so neither ``..`` nor a link can lead out of the folders.
    """
    p = Path(raw)
    roots = [d.resolve() for d in dirs]
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for c in candidates:
        real = c.resolve()
        if any(real.is_relative_to(r) for r in roots):
            if not real.is_file():
                raise ApiError(400, f"{raw}: no such adapter file in the allowed folders", param="lora_path")
            return real
    raise ApiError(403, f"{raw}: outside the allowed adapter folders", param="lora_path", kind="permission_error")


def _usage(c: Any) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}


async def _collect(stream: TextStream, request: Request, pool: ThreadPoolExecutor) -> str:
    """Run a whole generation; stop it (and free its context) if the client disconnects."""
    cancel = threading.Event()

    def work() -> str:
        parts = []
        try:
            for piece in stream:
                if cancel.is_set():
                    break
                parts.append(piece)
        finally:
            stream.close()
        return "".join(parts)

    task = asyncio.get_running_loop().run_in_executor(pool, work)
    while not task.done():
        await asyncio.wait([task], timeout=0.05)
        if not task.done() and await request.is_disconnected():
            cancel.set()
    return await task


async def _sse(stream: TextStream, rid: str, model: str, chat: bool, usage: bool,
               pool: ThreadPoolExecutor) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format. A client that goes away stops the generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def worker() -> None:
        try:
            for piece in stream:
                if cancel.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(queue.put_nowait, ("done", stream.result))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the client as an error event
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        finally:
            stream.close()  # frees the context at once

    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                      "choices": [choice]}) + "\n\n"

    loop.run_in_executor(pool, worker)
    try:
        if chat:
            yield chunk(None, role=True)
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield chunk(value)
            elif kind == "error":
                err = _error_for(value) if isinstance(value, EdgeLoraError) else ApiError(500, str(value), kind="server_error")
                yield "data: " + json.dumps({"error": {"message": err.message, "type": err.kind, "code": err.code}}) + "\n\n"
                break
            else:
                yield chunk(None, finish=value.finish_reason if value else "stop")
                if usage and value is not None:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                 "choices": [], "usage": _usage(value)}) + "\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()
