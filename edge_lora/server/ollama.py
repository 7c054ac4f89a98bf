"""Ollama's API on the same server: ``POST /api/chat`` and ``/api/generate`` (NDJSON streams,
Ollama's default, or one object), ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``,
``GET /api/version``; the base and each adapter are models (``name`` or ``name:latest``).

``format`` (``"json"`` or a JSON schema) goes through the same grammar path as OpenAI's
``response_format``; ``tools`` and ``tool_calls`` through the same tool calling. ``options``
map onto the runtime's sampling (Ollama's defaults where left out: temperature 0.8, top_k 40,
top_p 0.9, min_p 0, repeat_penalty 1.1, repeat_last_n 64; ``num_predict`` -1 or absent is the
server's ``--max-tokens-limit``). Load-time options (``num_ctx``, ``num_gpu``, ``num_thread``...)
and ``keep_alive`` are set when the server starts and ignored here; sampling Ollama has that
llama.cpp's chain here has not (``typical_p``, ``tfs_z``, ``mirostat``) is refused unless neutral.
Errors are Ollama's body, ``{"error": "..."}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from gguf import LlamaFileType
from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__
from ..runtime.grammar import Grammar
from ..runtime.reasoning import Thought
from ..runtime.request import Completion
from .errors import ApiError, error_for
from .service import Generation, Service

#: Ollama's documented defaults (its Modelfile reference) for the sampling it maps here
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1, "repeat_last_n": 64}
SAMPLING = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "seed": "seed",
            "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty", "stop": "stop"}
#: set when the server starts (``edge-lora serve`` flags), not per request
LOAD_TIME = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only",
             "use_mmap", "use_mlock", "embedding_only", "num_thread", "numa", "num_keep", "penalize_newline"}
#: sampling stages not in this chain: accepted at their neutral value only
NEUTRAL = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class ChatBody(_Body):
    model: str = Field(min_length=1)
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None


class GenerateBody(_Body):
    model: str = Field(min_length=1)
    prompt: str | None = ""
    system: str | None = None
    raw: bool | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None
    images: list[str] | None = None
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None


class ShowBody(_Body):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool | None = None


def _stamp() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def options_of(service: Service, body: ChatBody | GenerateBody) -> dict[str, Any]:
    """The runtime's options for an Ollama request. Raises :class:`ApiError` 400."""
    given = dict(body.options or {})
    unknown = sorted(set(given) - set(SAMPLING) - LOAD_TIME - set(NEUTRAL) - {"num_predict"})
    if unknown:
        raise ApiError(400, f"unknown options {unknown}", param="options")
    for name, neutral in NEUTRAL.items():
        if given.get(name, neutral) != neutral:
            raise ApiError(400, f"option {name} is not supported (only its neutral value {neutral})", param="options")
    opts = {**DEFAULTS, **{SAMPLING[k]: v for k, v in given.items() if k in SAMPLING and v is not None}}
    n = given.get("num_predict")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
        raise ApiError(400, f"options.num_predict must be an integer, got {n!r}", param="options")
    limit = service.settings.max_tokens_limit
    grammar = None
    if body.format == "json":
        grammar = Grammar.json_object()
    elif isinstance(body.format, dict):
        grammar = Grammar.from_json_schema(body.format, param="format")
    elif body.format not in (None, ""):
        raise ApiError(400, f"format must be \"json\" or a JSON schema, got {body.format!r}", param="format")
    if body.think not in (None, True, False):
        raise ApiError(400, f"think {body.think!r} is not supported (true or false)", param="think")
    if body.think is not None and not service.rt.thinks:
        raise ApiError(400, f"{body.model!r} does not think (its chat template has no <think> tags)", param="think")
    return service.options(limit if n is None or n < 0 else n, grammar=grammar, **opts)


def model_of(service: Service, name: str) -> dict[str, float | None]:
    """The adapters of an Ollama model name (``gemma``, ``gemma:latest``, ``json``)."""
    bare = name.removesuffix(":latest")
    if bare not in service.model_ids():
        raise ApiError(404, f"model {name!r} not found; models: {', '.join(service.model_ids())}", param="model")
    return service.adapters_for(bare, None)


def _durations(c: Completion) -> dict[str, int]:
    ns = 1_000_000
    return {"total_duration": int(c.timings.total_ms * ns), "load_duration": 0,
            "prompt_eval_count": c.prompt_tokens, "prompt_eval_duration": int(c.timings.prompt_ms * ns),
            "eval_count": c.completion_tokens, "eval_duration": int((c.timings.total_ms - c.timings.prompt_ms) * ns)}


def _done_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def _messages(body: ChatBody) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[str] = []  # ids given to the assistant's calls, answered by the tool turns in order
    for i, m in enumerate(body.messages):
        if m.images:
            raise ApiError(400, f"messages[{i}].images: this runtime takes text only (no vision input)", param="messages")
        msg: dict[str, Any] = {"role": m.role, "content": m.content or ""}
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                fn = c.get("function")
                if not isinstance(fn, dict):
                    raise ApiError(400, f"messages[{i}].tool_calls[{j}]: must be {{'function': {{'name', 'arguments'}}}}",
                                   param="messages")
                cid = f"c{i:04d}{j:04d}"  # 9 letters and digits: what Mistral's templates require
                pending.append(cid)
                calls.append({"id": cid, "type": "function",
                              "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or {}}})
            msg["tool_calls"] = calls
        if m.role == "tool":
            msg["tool_call_id"] = pending.pop(0) if pending else f"t{i:08d}"
            if m.tool_name:
                msg["name"] = m.tool_name
        out.append(msg)
    return out


def router(service: Service, auth: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(auth)])
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digests[path] = h.hexdigest()
        return digests[path]

    def details(adapter: str | None = None) -> dict[str, Any]:
        info = service.rt.base_info
        n = sum(int(np.prod(t.shape)) for t in info.tensors.values())
        try:
            quant = LlamaFileType(int(info.metadata.get("general.file_type", -1))).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = "unknown"
        return {"parent_model": service.settings.model_id if adapter else "", "format": "gguf",
                "family": info.architecture, "families": [info.architecture],
                "parameter_size": f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M", "quantization_level": quant}

    def entries() -> list[dict[str, Any]]:
        base = service.rt.model_path
        out = [(service.settings.model_id, Path(base), None)]
        out += [(name, a.path, name) for name, a in service.rt.adapters.items()]
        stamp = datetime.fromtimestamp(Path(base).stat().st_mtime, timezone.utc).isoformat()
        return [{"name": f"{mid}:latest", "model": f"{mid}:latest", "modified_at": stamp, "size": p.stat().st_size,
                 "digest": digest(p), "details": details(adapter)} for mid, p, adapter in out]

    @api.get("/api/version")
    async def version() -> dict:
        return {"version": __version__}

    @api.get("/api/tags")
    async def tags() -> dict:
        return {"models": await service.call(entries)}

    @api.get("/api/ps")
    async def ps() -> dict:
        models = await service.call(entries)
        far = datetime.fromtimestamp(time.time() + 10 * 365 * 86400, timezone.utc).isoformat()
        return {"models": [{**m, "expires_at": far, "size_vram": 0, "context_length": service.rt.n_ctx} for m in models]}

    @api.post("/api/show")
    async def show(body: ShowBody) -> dict:
        name = body.model or body.name
        if not name:
            raise ApiError(400, "model is required", param="model")
        adapters = model_of(service, name)
        info = service.rt.base_info
        adapter = next(iter(adapters), None)
        modelfile = f"FROM {service.rt.model_path}\n"
        if adapter:
            modelfile += f"ADAPTER {service.rt.adapters[adapter].path}\n"
        capabilities = ["completion"] + (["tools"] if service.rt.tool_layout else [])
        model_info = {"general.architecture": info.architecture,
                      f"{info.architecture}.context_length": info.arch_value("{arch}.context_length"),
                      f"{info.architecture}.block_count": info.arch_value("{arch}.block_count")}
        return {"modelfile": modelfile, "parameters": "", "template": service.rt.chat_template_source,
                "details": details(adapter), "model_info": model_info, "capabilities": capabilities,
                "modified_at": _stamp()}

    @api.post("/api/chat")
    async def chat(body: ChatBody, request: Request) -> Any:
        adapters = model_of(service, body.model)
        opts = options_of(service, body)
        if body.tools:
            opts["tools"] = body.tools
        if body.think is False:  # the template's own switch (Qwen3's, DeepSeek R1's)
            opts["template_kwargs"] = {"enable_thinking": False}
        if not body.messages:  # Ollama's "load the model" call
            return {"model": body.model, "created_at": _stamp(), "message": {"role": "assistant", "content": ""},
                    "done": True, "done_reason": "load"}
        gen = await service.start(adapters=adapters, options=opts, messages=_messages(body))
        return await _answer(body, gen, request, chat=True)

    @api.post("/api/generate")
    async def generate(body: GenerateBody, request: Request) -> Any:
        adapters = model_of(service, body.model)
        for name in ("images", "suffix", "template", "context"):
            if getattr(body, name):
                raise ApiError(400, f"{name} is not supported", param=name)
        opts = options_of(service, body)
        if not body.prompt:  # Ollama's "load the model" call
            return {"model": body.model, "created_at": _stamp(), "response": "", "done": True, "done_reason": "load"}
        if body.raw:
            gen = await service.start(adapters=adapters, options=opts, prompt=body.prompt)
        else:
            msgs = ([{"role": "system", "content": body.system}] if body.system else []) + \
                [{"role": "user", "content": body.prompt}]
            gen = await service.start(adapters=adapters, options=opts, messages=msgs)
        return await _answer(body, gen, request, chat=False)

    return api


def _piece(model: str, text: str, chat: bool) -> dict[str, Any]:
    if chat:
        return {"model": model, "created_at": _stamp(), "message": {"role": "assistant", "content": text}, "done": False}
    return {"model": model, "created_at": _stamp(), "response": text, "done": False}


def _final(model: str, c: Completion, text: str, chat: bool, think: bool | None = None) -> dict[str, Any]:
    out = _piece(model, text, chat)
    if think and c.reasoning_content is not None and text:  # the whole answer: its thought beside it
        if chat:
            out["message"]["thinking"] = c.reasoning_content
        else:
            out["thinking"] = c.reasoning_content
    if chat and c.tool_calls:
        out["message"]["tool_calls"] = [{"function": {"name": t.name, "arguments": json.loads(t.arguments)}}
                                        for t in c.tool_calls]
    return {**out, "done": True, "done_reason": _done_reason(c), **_durations(c), **({} if chat else {"context": []})}


async def _answer(body: ChatBody | GenerateBody, gen: Generation, request: Request, chat: bool) -> Any:
    if body.stream is False:
        text = await gen.collect(request.is_disconnected)
        if gen.result is None or gen.abandoned:
            return JSONResponse({}, status_code=499)
        return _final(body.model, gen.result, text, chat, body.think)
    return StreamingResponse(_ndjson(body.model, gen, chat, bool(body.think)), media_type="application/x-ndjson")


async def _ndjson(model: str, gen: Generation, chat: bool, think: bool) -> AsyncIterator[str]:
    """Ollama's stream: one JSON object per line, the last with ``done: true`` and the counts; a
    thought's pieces as ``thinking`` when ``think`` (else left out, as Ollama does)."""
    try:
        try:
            async for piece in gen.pieces():
                if isinstance(piece, Thought):
                    if think:
                        line = _piece(model, "", chat)
                        (line["message"] if chat else line)["thinking"] = str(piece)
                        yield json.dumps(line) + "\n"
                    continue
                yield json.dumps(_piece(model, piece, chat)) + "\n"
        except Exception as exc:  # noqa: BLE001 - the stream has started: the error is a line
            yield json.dumps({"error": error_for(exc).message}) + "\n"
            return
        assert gen.result is not None
        yield json.dumps(_final(model, gen.result, "", chat)) + "\n"
    finally:
        if gen.result is None:
            gen.cancel()
