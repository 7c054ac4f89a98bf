"""OpenAI's wire protocol: ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions``, plain and server-sent events, with usage. The base and each adapter
are models (vLLM's convention); ``"adapters": {name: scale}`` with the base's id mixes them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..runtime.grammar import Grammar
from .errors import ApiError
from .schemas import ChatCompletionRequest, CompletionRequest
from .openai_wire import response_of, sse
from .service import Generation, Service

#: OpenAI's own defaults (its API reference: temperature 1, top_p 1) and pure sampling for the
#: extensions, where a request leaves them out; the runtime's ranges still apply
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


def _options(service: Service, req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None,
             logprobs: int | None) -> dict:
    given = dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                 repeat_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty,
                 frequency_penalty=req.frequency_penalty, seed=req.seed, stop=req.stop)
    merged = {**OPENAI_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    opts = service.options(max_tokens, grammar=grammar_of(req), logit_bias=req.logit_bias, logprobs=logprobs, **merged)
    if req.presence_penalty or req.frequency_penalty:  # OpenAI's penalties count the whole generation
        opts["repeat_last_n"] = opts["max_tokens"]
    if logprobs is not None and req.stream:
        raise ApiError(400, "logprobs with stream is not supported yet: ask without stream", param="logprobs")
    return opts


def _seeded(opts: dict, n: int) -> list[dict]:
    """``n`` choices' options: a given seed becomes seed, seed + 1, ... (each choice reproducible,
    and different when sampling)."""
    seed = opts.get("seed")
    return [opts if seed is None else {**opts, "seed": seed + i} for i in range(n)]


def adapters_of(service: Service, req: ChatCompletionRequest | CompletionRequest) -> dict[str, float | None]:
    """The call's adapters: ``model``, with the ``adapters`` mix or llama.cpp server's ``lora``
    list (indexes into ``GET /lora-adapters``). Raises :class:`ApiError`."""
    if req.lora is None:
        return service.adapters_for(req.model, req.adapters)
    if req.adapters is not None:
        raise ApiError(400, "give adapters or lora, not both", param="lora")
    names = list(service.rt.adapters)
    bad = [e.id for e in req.lora if e.id >= len(names)]
    if bad:
        raise ApiError(400, f"lora ids {bad} are not loaded (GET /lora-adapters lists {len(names)})", param="lora")
    return service.adapters_for(req.model, {names[e.id]: e.scale for e in req.lora})


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
                 "root": model_id, "parent": None, "chat_template": service.rt.chat_template,
                 "n_ctx": service.rt.n_ctx}]
        for name, info in service.rt.adapters.items():
            entry = {"id": name, "object": "model", "created": created, "owned_by": "edge-lora",
                     "root": str(info.path), "parent": model_id}
            if info.invocation_tokens:  # an aLoRA acts from these tokens on (llama.cpp's server lists them too)
                entry["alora_invocation_tokens"] = list(info.invocation_tokens)
                entry["alora_invocation_string"] = service.rt.detokenize(info.invocation_tokens)
            data.append(entry)
        return {"object": "list", "data": data}

    @api.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        for entry in (await models())["data"]:
            if entry["id"] == model_id:
                return entry
        raise ApiError(404, f"the model {model_id!r} does not exist; models: {', '.join(service.model_ids())}",
                       param="model", code="model_not_found")

    @api.get("/lora-adapters")
    async def lora_adapters() -> list[dict]:
        """llama.cpp server's list: the ids its per-request ``lora`` field names."""
        return [{"id": i, "path": str(info.path), "scale": info.scale, "name": name}
                for i, (name, info) in enumerate(service.rt.adapters.items())]

    @api.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        adapters = adapters_of(service, req)
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.top_logprobs and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        opts = _options(service, req, req.max_completion_tokens or req.max_tokens, logprobs)
        if req.tools:  # an empty list is no tools (clients send one)
            opts.update(tools=req.tools, tool_choice=req.tool_choice, parallel_tool_calls=req.parallel_tool_calls)
        elif req.tool_choice is not None and req.tool_choice != "none":
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        if req.chat_template_kwargs:
            opts["template_kwargs"] = req.chat_template_kwargs
        msgs = [m.model_dump(exclude_none=True) for m in req.messages]
        gens = [await service.start(adapters=adapters, options=o, messages=msgs) for o in _seeded(opts, req.n or 1)]
        return await _respond(req, gens, request, chat=True)

    @api.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        adapters = adapters_of(service, req)
        opts = _options(service, req, req.max_tokens, req.logprobs)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        gens = [await service.start(adapters=adapters, options=o, prompt=p)
                for p in prompts for o in _seeded(opts, req.n or 1)]
        return await _respond(req, gens, request, chat=False)

    return api


async def _respond(req: ChatCompletionRequest | CompletionRequest, gens: list[Generation], request: Request,
                   chat: bool) -> Any:
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(sse(gens, rid, req.model, chat, usage), media_type="text/event-stream")
    texts = []
    for gen in gens:
        texts.append(await gen.collect(request.is_disconnected))
        if gen.result is None or gen.abandoned:  # the client went away: nobody to answer
            for g in gens:
                g.cancel()
            return JSONResponse({}, status_code=499)
    return response_of(rid, req.model, chat, texts, [g.result for g in gens])  # type: ignore[misc]
