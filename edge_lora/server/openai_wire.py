"""OpenAI's response shapes for chat and completions: choices (content, tool calls, log-probs),
usage, and server-sent events in its chunk format. Several generations (``n`` > 1, a prompt
list) become choices indexed in order."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..runtime.reasoning import Thought
from ..runtime.request import Completion, TokenLogprob
from .errors import error_for
from .service import Generation


def usage_of(results: Sequence[Completion]) -> dict:
    """OpenAI's ``usage`` over every choice (each prompt counted once per generation, as OpenAI does)."""
    prompt = sum(c.prompt_tokens for c in results)
    done = sum(c.completion_tokens for c in results)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
            "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in results)}}


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def chat_logprobs(c: Completion) -> dict | None:
    """``choices[].logprobs`` of a chat completion: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if not c.logprobs:
        return None

    def entry(t: TokenLogprob) -> dict:
        return {"token": _text(t.bytes), "logprob": t.logprob, "bytes": list(t.bytes),
                "top_logprobs": [{"token": _text(b), "logprob": lp, "bytes": list(b)} for _i, b, lp in t.top]}

    return {"content": [entry(t) for t in c.logprobs], "refusal": None}


def completion_logprobs(c: Completion) -> dict | None:
    """``choices[].logprobs`` of a legacy completion: tokens, token_logprobs, top_logprobs, text_offset."""
    if not c.logprobs:
        return None
    offsets, at = [], 0
    for t in c.logprobs:
        offsets.append(at)
        at += len(_text(t.bytes))
    return {"tokens": [_text(t.bytes) for t in c.logprobs], "token_logprobs": [t.logprob for t in c.logprobs],
            "top_logprobs": [{_text(b): lp for _i, b, lp in t.top} for t in c.logprobs], "text_offset": offsets}


def choice_of(c: Completion, text: str, index: int, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": c.finish_reason}
    if chat:
        if c.tool_calls:  # the content beside the calls, as parsed (not what streamed before them)
            text = c.content or ""
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if c.tool_calls else "")}
        if c.tool_calls:
            message["tool_calls"] = [t.as_openai() for t in c.tool_calls]
        if c.reasoning_content is not None:
            message["reasoning_content"] = c.reasoning_content  # vLLM's and DeepSeek's field
        choice["message"] = message
        choice["logprobs"] = chat_logprobs(c)
    else:
        choice["text"] = text
        choice["logprobs"] = completion_logprobs(c)
    return choice


def response_of(rid: str, model: str, chat: bool, texts: Sequence[str], results: Sequence[Completion]) -> dict:
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice_of(c, t, i, chat) for i, (t, c) in enumerate(zip(texts, results))],
            "usage": usage_of(results)}


async def sse(gens: Sequence[Generation], rid: str, model: str, chat: bool, usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, the choices one after another. A client that
    goes away cancels the generations (the server cancels this iteration, whose ``finally``
    cancels every call's token)."""
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict], **more: Any) -> str:
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                      "choices": choices, **more}) + "\n\n"

    def chunk(index: int, delta: dict | str | None, finish: str | None = None) -> str:
        if chat:
            return event([{"index": index, "delta": delta or {}, "finish_reason": finish, "logprobs": None}])
        return event([{"index": index, "text": delta or "", "finish_reason": finish, "logprobs": None}])

    try:
        for index, gen in enumerate(gens):
            if chat:
                yield chunk(index, {"role": "assistant", "content": ""})
            try:
                async for piece in gen.pieces():
                    if isinstance(piece, Thought):
                        if chat:
                            yield chunk(index, {"reasoning_content": str(piece)})
                        continue
                    yield chunk(index, {"content": piece} if chat else piece)
            except Exception as exc:  # noqa: BLE001 - the stream has started: the error is an event
                err = error_for(exc)
                yield "data: " + json.dumps({"error": {"message": err.message, "type": err.kind, "code": err.code}}) + "\n\n"
                break
            c = gen.result
            if chat and c is not None and c.tool_calls:  # whole calls, one delta entry each (clients join deltas)
                yield chunk(index, {"tool_calls": [{"index": i, **t.as_openai()} for i, t in enumerate(c.tool_calls)]})
            yield chunk(index, None, finish=c.finish_reason if c else "stop")
        else:
            results = [g.result for g in gens if g.result is not None]
            if usage and len(results) == len(gens):
                yield event([], usage=usage_of(results))
        yield "data: [DONE]\n\n"
    finally:
        for gen in gens:
            if gen.result is None:
                gen.cancel()
