"""The token loop: a prompt evaluated, then sampled tokens until a stop, the limit or a cancel."""

from __future__ import annotations

import random
import time
from functools import partial
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..engine.native import NativeModel, NativeSampler
from ..cancel import CancelToken
from ..errors import CancelledError, InvalidRequestError, NonFiniteLogitsError
from .speculative import Drafter
from .activation import Run, plan, segments
from .kv import KVState
from .stops import StopScanner
from .scheduler import Scheduler, Slot
from .registry import AdapterSet
from .grammar import Grammar
from .request import Completion, SamplingParams, Timings, TokenLogprob


def check_finite(logits: np.ndarray, kv: KVState, aset: AdapterSet, when: str) -> None:
    """Refuse NaN or infinite logits (an adapter scale or weight that overflows the computation):
    the KV holds the same overflow, so it is cleared, never reused."""
    if not np.isfinite(logits).all():
        kv.clear()
        raise NonFiniteLogitsError(
            f"the logits turned NaN or infinite {when} with adapters {aset.scales or 'none'}: an adapter's scale or "
            "weights overflow the computation; lower the scale")


def check_grammar(model: NativeModel, grammar: Grammar) -> None:
    """Refuse at the call a grammar llama.cpp cannot parse (:class:`InvalidRequestError`)."""
    NativeSampler(model).set_grammar(grammar.gbnf, grammar.root).close()


def sampler_for(model: NativeModel, params: SamplingParams) -> NativeSampler:
    """llama.cpp's sampler chain for ``params``, in llama.cpp's order (``common/sampling.cpp``):
    logit bias, penalties (over the last ``repeat_last_n`` tokens: repeat, with the prompt's
    tokens counted, as llama.cpp does; frequency and presence, OpenAI's formula
    ``logit - count * frequency - (count > 0) * presence`` over generated tokens only), then greedy at temperature 0, else top-k, top-p, min-p, temperature and a seeded draw.
    Disabled stages (their neutral values) are left out. A grammar constrains whatever the chain
    picks (:meth:`NativeSampler.set_grammar`)."""
    sampler = NativeSampler(model)
    if params.grammar is not None:
        sampler.set_grammar(params.grammar.gbnf, params.grammar.root)
    if params.logit_bias:
        sampler.add_logit_bias(params.logit_bias)
    if params.penalized:
        sampler.add_penalties(params.repeat_last_n, params.repeat_penalty, params.frequency_penalty,
                              params.presence_penalty)
    if params.temperature <= 0.0:
        return sampler.add_greedy()
    if params.top_k > 0:
        sampler.add_top_k(params.top_k)
    if params.top_p < 1.0:
        sampler.add_top_p(params.top_p)
    if params.min_p > 0.0:
        sampler.add_min_p(params.min_p)
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    return sampler.add_temperature(params.temperature).add_dist(seed)


def token_logprob(model: NativeModel, logits: np.ndarray, tok: int, k: int,
                  keep_special: frozenset[int] = frozenset()) -> TokenLogprob:
    """``tok``'s log-probability under ``logits`` (log-softmax over the vocabulary, in float64) and
    the ``k`` most likely tokens."""
    x = logits.astype(np.float64)
    m = x.max()
    lp = x - (m + np.log(np.exp(x - m).sum()))
    top = np.argpartition(-lp, k)[:k] if 0 < k < len(lp) else np.arange(len(lp)) if k else np.array([], dtype=int)
    top = top[np.argsort(-lp[top])]
    piece = lambda t: model.token_piece(int(t), special=int(t) in keep_special)  # noqa: E731
    return TokenLogprob(tok, piece(tok), float(lp[tok]), tuple((int(t), piece(t), float(lp[t])) for t in top))


def evaluate(slot: Slot, runs: Sequence[Run], tokens: Sequence[int], start: int, *, all_logits: bool = False,
             cancel: CancelToken | None = None) -> np.ndarray | None:
    """Evaluate ``tokens[start:]`` after what ``slot``'s KV holds (its first ``start`` tokens),
    each run under its own set's adapters (:func:`.activation.plan`). Returns the logits
    ``[len(tokens) - start, n_vocab]`` with ``all_logits``, else None (the last token's logits
    stay in the context, under the last run's set, which generation continues with)."""
    outs = []
    via = partial(slot.batcher.step, slot.seq) if slot.batcher is not None else None  # chunked, batched
    for r in runs:
        if r.end <= start:
            continue
        out = slot.kv.decode(r.aset.key, tokens[max(start, r.start) : r.end], adapters=r.aset.run_with,
                             all_logits=all_logits, cancel=cancel, via=via)
        if out is not None:
            outs.append(out)
    return np.concatenate(outs) if all_logits else None


def generate(
    pool: Scheduler,
    slot: Slot,
    aset: AdapterSet,
    prompt: list[int],
    params: SamplingParams,
    on_token: Callable[[int], None] | None = None,
    cancel: CancelToken | None = None,
    keep_special: frozenset[int] = frozenset(),
    drafter: Drafter | None = None,
) -> Iterator[str]:
    """Yield text pieces; the generator's return value (StopIteration.value) is the Completion.
    A ``cancel`` token stops it (``finish_reason == "cancelled"``), within a token or a graph node.
    The prompt must leave room for a token (the runtime checks it at the call). Special tokens
    are left out of the text but those in ``keep_special`` (a tool-call marker such as Mistral's
    ``[TOOL_CALLS]``: llama.cpp's "preserved tokens"). With a ``drafter`` (prompt lookup or a draft
    model, over the prompt), each step evaluates the token and a draft in one batch and keeps the
    drafted tokens the sampler picks itself (:mod:`.speculative`: the same tokens as without it). On a sequence of a
    shared context, each step is decoded batched with the context's other generating sequences
    (:mod:`.batch`) and sampled from the logits it returns."""
    t0 = time.perf_counter()
    if not prompt:
        raise InvalidRequestError("the prompt is empty")
    n_ctx = slot.ctx.n_ctx
    kv = slot.kv
    runs = plan(aset, prompt)  # an aLoRA acts from its invocation on
    cached = pool.prepare(slot, segments(runs, prompt))
    batched = slot.batcher is not None
    rows: np.ndarray | None = None  # batched: the logits of the last step's rows
    try:
        if cached == len(prompt):  # held with its logits: put them back for the sampler, no decode
            if batched:
                rows = kv.kept_logits(cached)[None]  # type: ignore[index]
            else:
                slot.ctx.set_adapters(aset.run_with)
                slot.ctx.set_last_logits(kv.kept_logits(cached))  # type: ignore[arg-type]
        else:
            evaluate(slot, runs, prompt, cached, cancel=cancel)  # leaves the last token's logits for the sampler
            kv.keep_logits()
            if batched:
                rows = kv.kept[1][None]  # type: ignore[index]
    except CancelledError:
        t = (time.perf_counter() - t0) * 1000
        return Completion("", [], "cancelled", len(prompt), 0, cached, aset.scales, Timings(t, t, 0.0, t))
    t_prompt = time.perf_counter()
    sampler = sampler_for(slot.ctx.model, params)
    model = slot.ctx.model
    scanner = StopScanner(params.stop)
    out_tokens: list[int] = []
    logprobs: list[TokenLogprob] = []
    finish = "length"
    t_first = None
    lookup = drafter  # None on a model that cannot rewind (the runtime makes none there)
    draft: list[int] = []  # drafted after the token decoded last: their rows follow its row 0
    row, at = -1, len(kv)  # the row sampled next (-1: the last one), the KV length before the last decode
    n_drafted = n_accepted = 0
    via = partial(slot.batcher.step, slot.seq) if slot.batcher is not None else None
    max_draft = slot.ctx.n_batch - 1 if batched else n_ctx
    try:
        # the prompt counts for the repeat penalty (llama.cpp's convention); OpenAI's two alone count
        # generated tokens only (with a repeat penalty too, one stage counts the prompt for all three)
        for tok in prompt[-params.repeat_last_n :] if params.repeat_penalty != 1.0 else ():
            sampler.accept(tok)
        while True:
            if (cancel is not None and cancel.cancelled) or pool.closing.is_set():
                finish = "cancelled"
                break
            logits = rows[row] if rows is not None else slot.ctx.logits_ith(row)
            check_finite(logits, kv, aset, f"after {len(out_tokens)} generated tokens")
            tok = sampler.sample_logits(logits) if rows is not None else sampler.sample(slot.ctx, row)
            if params.logprobs is not None and not model.is_eog(tok):
                logprobs.append(token_logprob(model, logits, tok, params.logprobs, keep_special))
            if t_first is None:
                t_first = time.perf_counter()
            if model.is_eog(tok):
                finish = "stop"
                break
            out_tokens.append(tok)
            if on_token is not None:
                on_token(tok)
            piece = scanner.feed(model.token_piece(tok, special=tok in keep_special))
            if piece:
                yield piece
            if scanner.stopped:
                finish = "stop"
                break
            if lookup is None:
                if len(out_tokens) >= params.max_tokens or len(kv) + 1 >= n_ctx:
                    break
                rows = kv.decode(aset.key, [tok], adapters=aset.run_with, via=via)
                continue
            lookup.extend([tok])
            if 0 <= row < len(draft) and tok == draft[row]:  # the drafted token: its row is computed
                n_accepted += 1
                row += 1
                if len(out_tokens) >= params.max_tokens:
                    break
                continue
            if draft:
                kv.truncate(at + 1 + row)  # the rows after the sampled one were drafted past a miss
                lookup.record(len(draft), row)
            if len(out_tokens) >= params.max_tokens or len(kv) + 1 >= n_ctx:
                break
            draft = lookup.draft(min(params.max_tokens - len(out_tokens) - 1, n_ctx - len(kv) - 2, max_draft))
            n_drafted += len(draft)
            at = len(kv)
            t_step = time.perf_counter()
            rows = kv.decode(aset.key, [tok, *draft], adapters=aset.run_with, all_rows=bool(draft), via=via)
            if lookup.costs is not None:
                lookup.costs.record(1 + len(draft), (time.perf_counter() - t_step) * 1000)
            row = 0 if draft else -1
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
        logprobs=tuple(logprobs),
        draft_tokens=n_drafted,
        draft_accepted=n_accepted,
        timings=Timings(
            prompt_ms=(t_prompt - t0) * 1000,
            ttft_ms=(t_first - t0) * 1000,
            decode_ms=(t_end - t_first) * 1000,
            total_ms=(t_end - t0) * 1000,
        ),
    )
