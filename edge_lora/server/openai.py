"""OpenAI's wire protocol: ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, plain and server-sent events, with usage. The base and each adapter
are models (vLLM's convention); ``"adapters": {name: scale}`` with the base's id mixes them."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..runtime.grammar import Grammar
from ..runtime.request import Completion
from .errors import ApiError, error_for
from .schemas import ChatCompletionRequest, CompletionRequest
from .service import Generation, Service

#: OpenAI's own defaults (its API reference: temperature 1, top_p 1) and pure sampling for the
#: extensions, where a request leaves them out; the runtime's ranges still apply
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


def _options(service: Service, req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> dict:
    given = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                 repeat_penalty=req.repeat_penalty, seed=req.seed, stop=req.stop)
    merged = {**OPENAI_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    return service.options(max_tokens, grammar=grammar_of(req), **merged)


def grammar_of(req: ChatCompletionRequest | CompletionRequest) -> Grammar | None:
    """The grammar a request's ``response_format`` (or llama.cpp's ``json_schema``/``grammar``
    extensions) asks for; at most one of them. Raises :class:`ApiError` 400 for a second one and
    :class:`InvalidRequestError` for a schema the grammar cannot enforce."""
    given = [k for k in ("json_schema", "grammar") if getattr(req, k) is not None]
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        given.append("response_format")
    if len(given) > 1:
        raise ApiError(400, f"give one of response_format, json_schema and grammar, not {' and '.join(given)}",
                       param=given[1])
    if req.grammar is not None:
        return Grammar(req.grammar)
    if req.json_schema is not None:
        return Grammar.from_json_schema(req.json_schema, param="json_schema")
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return Grammar.json_object()
    assert fmt.json_schema is not None  # the schema's validator
    return Grammar.from_json_schema(fmt.json_schema.schema_, param="response_format.json_schema.schema")


def router(service: Service, auth: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(auth)])
    created = int(time.time())

    @api.get("/v1/models")
    async def models() -> dict:
        model_id = service.settings.model_id
        data = [{"id": model_id, "object": "model", "created": created, "owned_by": "edge-lora",
                 "root": model_id, "parent": None}]
        for name, info in service.rt.adapters.items():
            entry = {"id": name, "object": "model", "created": created, "owned_by": "edge-lora",
                     "root": str(info.path), "parent": model_id}
            if info.invocation_tokens:  # an aLoRA acts from these tokens on (llama.cpp's server lists them too)
                entry["alora_invocation_tokens"] = list(info.invocation_tokens)
                entry["alora_invocation_string"] = service.rt.detokenize(info.invocation_tokens)
            data.append(entry)
        return {"object": "list", "data": data}

    @api.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        adapters = service.adapters_for(req.model, req.adapters)
        opts = _options(service, req, req.max_completion_tokens or req.max_tokens)
        if req.tools is not None:
            opts.update(tools=req.tools, tool_choice=req.tool_choice, parallel_tool_calls=req.parallel_tool_calls)
        elif req.tool_choice is not None and req.tool_choice != "none":
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        msgs = [m.model_dump(exclude_none=True) for m in req.messages]
        gen = await service.start(adapters=adapters, options=opts, messages=msgs)
        return await _respond(req, gen, request, chat=True)

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        adapters = service.adapters_for(req.model, req.adapters)
        gen = await service.start(adapters=adapters, options=_options(service, req, req.max_tokens), prompt=req.prompt)
        return await _respond(req, gen, request, chat=False)

    return api


async def _respond(req: ChatCompletionRequest | CompletionRequest, gen: Generation, request: Request,
                   chat: bool) -> Any:
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(gen, rid, req.model, chat, usage), media_type="text/event-stream")
    text = await gen.collect(request.is_disconnected)
    c = gen.result
    if c is None or gen.abandoned:  # the client went away: nobody to answer
        return JSONResponse({}, status_code=499)
    choice: dict[str, Any] = {"index": 0, "finish_reason": c.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text or (None if c.tool_calls else "")}
        if c.tool_calls:
            choice["message"]["tool_calls"] = [t.as_openai() for t in c.tool_calls]
    else:
        choice["text"] = text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [choice], "usage": usage_of(c)}


def usage_of(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": c.cached_tokens}}


async def _sse(gen: Generation, rid: str, model: str, chat: bool, usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format. A client that goes away cancels the generation
    (the server cancels this iteration, whose ``finally`` cancels the call's token)."""
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(payload: dict) -> str:
        return "data: " + json.dumps(payload) + "\n\n"

    def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
        return event({"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, role=True)
        try:
            async for piece in gen.pieces():
                yield chunk(piece)
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error is an event
            err = error_for(exc)
            yield event({"error": {"message": err.message, "type": err.kind, "code": err.code}})
        else:
            c = gen.result
            if chat and c is not None and c.tool_calls:  # whole calls, in one delta each (clients join deltas)
                yield event({"id": rid, "object": obj, "created": created, "model": model, "choices": [
                    {"index": 0, "delta": {"tool_calls": [{"index": i, **t.as_openai()} for i, t in enumerate(c.tool_calls)]},
                     "finish_reason": None, "logprobs": None}]})
            yield chunk(None, finish=c.finish_reason if c else "stop")
            if usage and c is not None:
                yield event({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                             "usage": usage_of(c)})
        yield "data: [DONE]\n\n"
    finally:
        if gen.result is None:
            gen.cancel()
