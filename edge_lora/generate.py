"""Sampling parameters, the decode/sample loop, stop strings and results."""

from __future__ import annotations

import codecs
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .engine.native import NativeSampler
from .cancel import CancelToken
from .errors import CancelledError, ContextOverflowError, InvalidRequestError, NonFiniteLogitsError
from .pool import ContextPool, Slot
from .registry import AdapterSet


@dataclass(frozen=True)
class SamplingParams:
    """Validated generation options (all keyword arguments of the text APIs)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        for name, lo, hi in (("temperature", 0.0, 100.0), ("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0),
                             ("repeat_penalty", 1e-6, 100.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                problems.append(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {list(self.stop)!r}")
        if problems:
            raise InvalidRequestError("invalid generation options", problems)

    @classmethod
    def build(cls, stop: str | Sequence[str] | None = None, **kw: object) -> SamplingParams:
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(stop=stops, **{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]


@dataclass(frozen=True)
class Timings:
    prompt_ms: float  # evaluating the prompt tokens not found in the cache
    ttft_ms: float  # call start to the first generated token
    decode_ms: float  # generating after the first token
    total_ms: float


@dataclass(frozen=True)
class Completion:
    """The result of one generation."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end of generation or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused (same adapter set) or restored
    adapters: dict[str, float]
    timings: Timings = field(repr=False)

    @property
    def tokens_per_second(self) -> float:
        n = self.completion_tokens - 1
        return n / (self.timings.decode_ms / 1000) if n > 0 and self.timings.decode_ms > 0 else 0.0


class _StopScanner:
    """Assembles UTF-8 text from token pieces; holds back what could start a stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        self.text += self.decoder.decode(piece)
        for s in self.stops:
            i = self.text.find(s, max(0, self.emitted - len(s)))
            if i >= 0:
                self.text = self.text[:i]
                self.stopped = True
                return self._emit(len(self.text))
        hold = max((_overlap(self.text, s) for s in self.stops), default=0)
        return self._emit(len(self.text) - hold)

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


def generate(
    pool: ContextPool,
    slot: Slot,
    aset: AdapterSet,
    prompt: list[int],
    params: SamplingParams,
    on_token: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[str]:
    """Yield text pieces; the generator's return value (StopIteration.value) is the Completion.
    A ``cancel`` token stops it (``finish_reason == "cancelled"``), within a token or a graph node."""
    t0 = time.perf_counter()
    if not prompt:
        raise InvalidRequestError("the prompt is empty")
    n_ctx = slot.ctx.n_ctx
    if len(prompt) >= n_ctx:
        raise ContextOverflowError(
            f"the prompt has {len(prompt)} tokens; the context holds {n_ctx} (leave room for at least one "
            "generated token: shorten the prompt or raise n_ctx)",
            needed=len(prompt) + 1,
            n_ctx=n_ctx,
        )
    cached = pool.prepare(slot, aset, prompt)
    if cancel is not None:
        slot.ctx.abort_when(lambda: cancel.cancelled)  # a long prompt stops within a graph node
    try:
        slot.ctx.decode(prompt[cached:], cached)  # leaves the last token's logits for the sampler
    except CancelledError:
        slot.kv_tokens = []  # a partial evaluation: nothing in the KV is reusable
        slot.ctx.clear()
        t = (time.perf_counter() - t0) * 1000
        return Completion("", [], "cancelled", len(prompt), 0, cached, aset.scales, Timings(t, t, 0.0, t))
    finally:
        if cancel is not None:
            slot.ctx.abort_when(None)
    slot.kv_tokens = list(prompt)
    t_prompt = time.perf_counter()
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    sampler = NativeSampler(
        slot.ctx.model, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
        min_p=params.min_p, repeat_penalty=params.repeat_penalty, repeat_last_n=params.repeat_last_n, seed=seed,
    )
    model = slot.ctx.model
    scanner = _StopScanner(params.stop)
    out_tokens: list[int] = []
    finish = "length"
    t_first = None
    try:
        for tok in prompt[-params.repeat_last_n :] if params.repeat_penalty != 1.0 else ():
            sampler.accept(tok)
        while True:
            if (cancel is not None and cancel.cancelled) or pool.closing.is_set():
                finish = "cancelled"
                break
            if not np.isfinite(slot.ctx.last_logits()).all():
                slot.kv_tokens = []  # the KV holds the same overflow: never reuse it
                slot.ctx.clear()
                raise NonFiniteLogitsError(
                    f"the logits turned NaN or infinite after {len(out_tokens)} generated tokens with adapters "
                    f"{aset.scales or 'none'}: an adapter's scale or weights overflow the computation; lower the scale"
                )
            tok = sampler.sample(slot.ctx)
            if t_first is None:
                t_first = time.perf_counter()
            if model.is_eog(tok):
                finish = "stop"
                break
            out_tokens.append(tok)
            if on_token is not None:
                on_token(tok)
            piece = scanner.feed(model.token_piece(tok))
            if piece:
                yield piece
            if scanner.stopped:
                finish = "stop"
                break
            if len(out_tokens) >= params.max_tokens or len(slot.kv_tokens) + 1 >= n_ctx:
                break
            slot.ctx.decode([tok], len(slot.kv_tokens))
            slot.kv_tokens.append(tok)
        rest = scanner.finish()
        if rest:
            yield rest
    finally:
        sampler.close()
    t_end = time.perf_counter()
    t_first = t_first or t_end
    return Completion(
        text=scanner.text,
        tokens=out_tokens,
        finish_reason=finish,
        prompt_tokens=len(prompt),
        completion_tokens=len(out_tokens),
        cached_tokens=cached,
        adapters=aset.scales,
        timings=Timings(
            prompt_ms=(t_prompt - t0) * 1000,
            ttft_ms=(t_first - t0) * 1000,
            decode_ms=(t_end - t_first) * 1000,
            total_ms=(t_end - t0) * 1000,
        ),
    )
