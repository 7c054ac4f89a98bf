"""OpenAI's Responses API: ``POST /v1/responses`` (plain and streaming events), ``GET`` and
``DELETE /v1/responses/{id}``, over the same service as chat completions.

A request becomes chat messages: ``instructions`` (a system turn), the conversation kept for
``previous_response_id`` (in memory, the last :data:`STORED` responses), then ``input`` (a string,
or items: messages with ``input_text`` parts, ``function_call`` and ``function_call_output``).
``tools`` (function tools), ``tool_choice``, ``text.format`` (structured output) and the
sampling fields map onto the chat path's; the answer is a ``message`` item and one
``function_call`` item per call.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from threading import Lock
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..runtime.grammar import Grammar
from ..runtime.reasoning import Thought
from ..runtime.request import Completion
from .errors import ApiError, error_for
from .schemas import ResponsesRequest
from .service import Generation, Service

#: responses kept for ``previous_response_id`` (oldest dropped first)
STORED = 256
#: OpenAI's defaults where a request leaves them out (as on the chat path)
DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


class Store:
    """The conversations of recent responses, by id, bounded; thread-safe."""

    def __init__(self, size: int = STORED) -> None:
        self._items: OrderedDict[str, tuple[list[dict], dict]] = OrderedDict()
        self._size, self._lock = size, Lock()

    def put(self, rid: str, messages: list[dict], response: dict) -> None:
        with self._lock:
            self._items[rid] = (messages, response)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, rid: str) -> tuple[list[dict], dict] | None:
        with self._lock:
            return self._items.get(rid)

    def delete(self, rid: str) -> bool:
        with self._lock:
            return self._items.pop(rid, None) is not None


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content: must be a string or a list of parts", param="input")
    texts = []
    for i, part in enumerate(content or ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise ApiError(400, f"{where}.content[{i}]: {kind!r} parts are not supported (text only: no vision, "
                           "audio or file input)", param="input")
    return "\n".join(texts)


def messages_of(req: ResponsesRequest, history: list[dict]) -> list[dict]:
    """The chat messages of a request: instructions, the earlier conversation, then the input."""
    # a previous response's instructions are not carried over (OpenAI's rule): the store keeps none
    msgs: list[dict] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    msgs += copy.deepcopy(history)  # the stored turns stay as they were
    if isinstance(req.input, str):
        return [*msgs, {"role": "user", "content": req.input}]
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise ApiError(400, f"{where}.role: {role!r} is not user, system, developer or assistant", param="input")
            msgs.append({"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if msgs and msgs[-1]["role"] == "assistant" and msgs[-1].get("tool_calls") and not msgs[-1]["content"]:
                msgs[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            msgs.append({"role": "tool", "tool_call_id": item.get("call_id"),
                         "content": out if isinstance(out, str) else json.dumps(out)})
        else:
            raise ApiError(400, f"{where}: items of type {kind!r} are not supported (message, function_call, "
                           "function_call_output)", param="input")
    return msgs


def _tools(req: ResponsesRequest) -> dict[str, Any]:
    if not req.tools:  # an empty list is no tools (clients send one)
        return {}
    tools = []
    for i, t in enumerate(req.tools):
        if t.get("type") != "function":
            raise ApiError(400, f"tools[{i}]: {t.get('type')!r} tools are not supported (function tools only)",
                           param="tools")
        fn = {k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None}
        tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": req.parallel_tool_calls}


def _grammar(req: ResponsesRequest) -> Grammar | None:
    fmt = (req.text or {}).get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise ApiError(400, "text.format must be an object such as {\"type\": \"json_schema\", ...}", param="text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_object()
    if kind == "json_schema":
        return Grammar.from_json_schema(fmt.get("schema") or {}, param="text.format.schema")
    raise ApiError(400, f"text.format.type {kind!r} is not text, json_object or json_schema", param="text.format")


def _output(c: Completion, text: str) -> list[dict]:
    items: list[dict] = []
    if text or not c.tool_calls:
        items.append(_message(f"msg_{uuid.uuid4().hex}", text, "completed"))
    for call in c.tool_calls:
        items.append(_call_item(call.id, call.name, call.arguments, "completed"))
    return items


def _message(mid: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": content}


def _call_item(call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{call_id.removeprefix('call_')}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def router(service: Service, auth: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(auth)])
    store = Store()

    def shell(rid: str, req: ResponsesRequest, status: str, output: list[dict], c: Completion | None) -> dict:
        usage = None
        if c is not None:
            usage = {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens,
                     "total_tokens": c.prompt_tokens + c.completion_tokens,
                     "input_tokens_details": {"cached_tokens": c.cached_tokens},
                     "output_tokens_details": {"reasoning_tokens": 0}}
        return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
                "model": req.model, "output": output, "usage": usage, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "tools": req.tools or [],
                "tool_choice": req.tool_choice or "auto", "parallel_tool_calls": req.parallel_tool_calls is not False,
                "text": req.text or {"format": {"type": "text"}}, "previous_response_id": req.previous_response_id,
                "metadata": req.metadata or {}, "store": req.store is not False, "truncation": "disabled"}

    @api.post("/v1/responses")
    async def create(req: ResponsesRequest, request: Request) -> Any:
        history: list[dict] = []
        if req.previous_response_id is not None:
            got = store.get(req.previous_response_id)
            if got is None:
                raise ApiError(400, f"previous response {req.previous_response_id!r} not found (this server keeps "
                               f"the last {STORED}, in memory)", param="previous_response_id")
            history = got[0]
        msgs = messages_of(req, history)
        given = dict(temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        opts = service.options(req.max_output_tokens, grammar=_grammar(req),
                               **{**DEFAULTS, **{k: v for k, v in given.items() if v is not None}})
        opts.update(_tools(req))
        gen = await service.start(adapters=service.adapters_for(req.model, req.adapters), options=opts, messages=msgs)
        rid = f"resp_{uuid.uuid4().hex}"

        def finish(text: str, c: Completion) -> dict:
            out = _output(c, text)
            body = shell(rid, req, "incomplete" if c.finish_reason == "length" else "completed", out, c)
            if req.store is not False:
                turn = {"role": "assistant", "content": text or (None if c.tool_calls else ""),
                        **({"tool_calls": [t.as_openai() for t in c.tool_calls]} if c.tool_calls else {})}
                kept = msgs[1:] if req.instructions else msgs  # without this request's instructions
                store.put(rid, copy.deepcopy([*kept, turn]), body)
            return body

        if req.stream:
            return StreamingResponse(_events(gen, rid, req, shell, finish), media_type="text/event-stream")
        text = await gen.collect(request.is_disconnected)
        if gen.result is None or gen.abandoned:
            return JSONResponse({}, status_code=499)
        return finish(text, gen.result)

    @api.get("/v1/responses/{rid}")
    async def retrieve(rid: str) -> dict:
        got = store.get(rid)
        if got is None:
            raise ApiError(404, f"no response {rid!r} is kept here", param="response_id", kind="not_found_error")
        return got[1]

    @api.delete("/v1/responses/{rid}")
    async def delete(rid: str) -> dict:
        if not store.delete(rid):
            raise ApiError(404, f"no response {rid!r} is kept here", param="response_id", kind="not_found_error")
        return {"id": rid, "object": "response", "deleted": True}

    return api


async def _events(gen: Generation, rid: str, req: ResponsesRequest, shell: Callable, finish: Callable) -> AsyncIterator[str]:
    """The Responses API's server-sent events, in its order: created, in_progress, the message
    item (added, content part added, text deltas, text done, part done, item done), each
    function call item (added, arguments delta and done, item done), then completed."""
    seq = 0

    def event(kind: str, **payload: Any) -> str:
        nonlocal seq
        seq += 1
        return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq - 1, **payload})}\n\n"

    mid, text, opened = f"msg_{uuid.uuid4().hex}", "", False
    try:
        yield event("response.created", response=shell(rid, req, "in_progress", [], None))
        yield event("response.in_progress", response=shell(rid, req, "in_progress", [], None))
        try:
            async for piece in gen.pieces():
                if isinstance(piece, Thought):  # not streamed as output text (no reasoning items yet)
                    continue
                if not opened:
                    opened = True
                    yield event("response.output_item.added", output_index=0, item=_message(mid, None, "in_progress"))
                    yield event("response.content_part.added", item_id=mid, output_index=0, content_index=0,
                                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                text += piece
                yield event("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=piece,
                            logprobs=[])
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error is an event
            err = error_for(exc)
            yield event("error", code=err.code, message=err.message, param=err.param)
            return
        c = gen.result
        assert c is not None
        body = finish(text, c)
        index = 0
        if opened or not c.tool_calls:
            if not opened:
                yield event("response.output_item.added", output_index=0, item=_message(mid, None, "in_progress"))
                yield event("response.content_part.added", item_id=mid, output_index=0, content_index=0,
                            part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            yield event("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[])
            yield event("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part)
            yield event("response.output_item.done", output_index=0, item=_message(mid, text, "completed"))
            body["output"][0]["id"] = mid
            index = 1
        for call in c.tool_calls:
            item = _call_item(call.id, call.name, "", "in_progress")
            yield event("response.output_item.added", output_index=index, item=item)
            yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=call.arguments)
            yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        arguments=call.arguments, name=call.name)
            yield event("response.output_item.done", output_index=index,
                        item=_call_item(call.id, call.name, call.arguments, "completed"))
            index += 1
        kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        yield event(kind, response=body)
    finally:
        if gen.result is None:
            gen.cancel()
