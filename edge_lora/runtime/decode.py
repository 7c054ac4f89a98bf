"""The decode/sample loop and stop strings."""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..engine.native import NativeSampler
from ..cancel import CancelToken
from ..errors import CancelledError, ContextOverflowError, InvalidRequestError, NonFiniteLogitsError
from .kv import ContextPool, Slot
from .registry import AdapterSet
from .request import Completion, SamplingParams, Timings


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
