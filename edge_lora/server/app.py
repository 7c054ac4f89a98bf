"""The local server: middleware, authentication, error mapping and one router per protocol.

Protocols: OpenAI's (:mod:`.openai`: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``; :mod:`.responses`: ``/v1/responses``), Ollama's (:mod:`.ollama`: ``/api/...``)
and adapter loading (:mod:`.lora_admin`, vLLM's names), all over the
protocol-neutral :mod:`.service`; the web page at ``/`` (:mod:`.web`). ``GET /health`` and the
page's static files need no key. Library errors become HTTP
statuses and OpenAI-style error bodies in :mod:`.errors` only.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .._version import __version__
from ..errors import EdgeLoraError
from . import lora_admin, ollama, openai, responses, web
from .errors import ApiError, error_for
from .lora_admin import allowed_path
from .service import ServerSettings, Service

if TYPE_CHECKING:  # the runtime loads the native engine; the app only calls it
    from ..runtime.runtime import Runtime

__all__ = ["ApiError", "ServerSettings", "allowed_path", "create_app"]


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


access_log = logging.getLogger("edge_lora.server.access")


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a request cannot write lines into the log."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)[:200]


def _mix_of(body: bytes) -> str | None:
    """The ``"adapters"`` mix of a request body as ``name:scale,...`` (None without one)."""
    m = re.search(rb'"adapters"\s*:\s*(\{[^{}]{0,1024}\})', body)
    if not m:
        return None
    try:
        mix = json.loads(m.group(1))
    except ValueError:
        return None
    return ",".join(f"{k}:{v:g}" if isinstance(v, (int, float)) else f"{k}:default" for k, v in mix.items()) or "none"


class AccessLog:
    """ASGI middleware: one line per request at info (method, path, model, status, prompt and
    completion tokens, ms), at warning for a 4xx/5xx with the error's message. Streams are logged
    when they end."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        state: dict[str, Any] = {"status": 0, "body": b"", "model": None}

        async def peek() -> dict:
            message = await receive()
            if state["model"] is None and message.get("body"):
                m = re.search(rb'"model"\s*:\s*"([^"]{1,128})"', message["body"])
                state["model"] = m.group(1).decode(errors="replace") if m else "-"
                state["mix"] = _mix_of(message["body"])
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":  # the tail: a stream's usage comes last
                state["body"] = (state["body"] + message.get("body", b""))[-65536:]
            await send(message)

        try:
            await self.app(scope, peek, sending)
        except Exception:
            state["status"] = state["status"] or 500
            raise
        finally:
            self._log(scope, state, (time.perf_counter() - t0) * 1000)

    @staticmethod
    def _log(scope: dict, state: dict[str, Any], ms: float) -> None:
        status, body = state["status"], state["body"]
        usage = (re.findall(rb'"prompt_tokens":\s*(\d+),\s*"completion_tokens":\s*(\d+)', body)
                 or re.findall(rb'"input_tokens":\s*(\d+),\s*"output_tokens":\s*(\d+)', body)  # Responses
                 or re.findall(rb'"prompt_eval_count":\s*(\d+),\s*"prompt_eval_duration":\s*\d+,\s*"eval_count":\s*(\d+)',
                               body))  # Ollama
        tokens = f"tokens {usage[-1][0].decode()}+{usage[-1][1].decode()}" if usage else "tokens -"
        path, model = _printable(scope["path"]), _printable(state["model"] or "-")
        mix = f" adapters={_printable(state['mix'])}" if state.get("mix") else ""
        line = f'{scope["method"]} {path} model={model}{mix} {status} {tokens} {ms:.0f} ms'
        if status >= 500:
            access_log.error("%s", line)
        elif status >= 400:
            m = re.search(rb'"(?:message|error)":\s*"((?:[^"\\]|\\.){0,300})', body)
            access_log.warning("%s: %s", line, m.group(1).decode(errors="replace") if m else "")
        else:
            access_log.info("%s", line)


def create_app(rt: Runtime, settings: ServerSettings) -> FastAPI:
    """The ASGI app serving ``rt``. The caller owns ``rt`` (and closes it)."""
    app = FastAPI(title="edge-lora", version=__version__)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AccessLog)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="edge-lora")
    service = Service(rt, settings, executor)

    def reply(req: Request, err: ApiError) -> JSONResponse:
        """The error in the body of the path's protocol: Ollama's ``{"error": "..."}`` under
        ``/api/``, OpenAI's everywhere else."""
        if req.url.path.startswith("/api/"):
            return JSONResponse({"error": err.message}, status_code=err.status)
        return err.response()

    @app.exception_handler(ApiError)
    async def _api_error(req: Request, exc: ApiError) -> JSONResponse:
        return reply(req, exc)

    @app.exception_handler(EdgeLoraError)
    async def _lib_error(req: Request, exc: EdgeLoraError) -> JSONResponse:
        return reply(req, error_for(exc))

    @app.exception_handler(HTTPException)
    async def _http(req: Request, exc: HTTPException) -> JSONResponse:  # routing's 404 and 405
        what = {404: f"no endpoint {req.method} {req.url.path} (see GET /v1/models and README's endpoint table)",
                405: f"{req.method} is not allowed on {req.url.path}"}.get(exc.status_code, str(exc.detail))
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return reply(req, ApiError(exc.status_code, what, kind=kind, code="unknown_url" if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:  # a bug: a 500 in the protocol's body
        logging.getLogger("edge_lora.server").exception("unexpected error on %s %s", req.method, req.url.path)
        return reply(req, error_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        text = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errs)
        return reply(req, ApiError(400, text or "invalid request", param=param))

    def auth(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_id, "adapters": len(rt.adapters),
                "slots": {"total": rt.n_parallel, "busy": rt.busy_contexts}}

    app.include_router(openai.router(service, auth))
    app.include_router(responses.router(service, auth))
    if settings.ollama:
        app.include_router(ollama.router(service, auth))
    app.include_router(lora_admin.router(service, auth))
    if settings.web:
        app.include_router(web.router())
    app.state.runtime = rt
    app.state.executor = executor
    app.state.service = service
    return app
