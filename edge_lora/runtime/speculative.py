"""Speculative decoding by prompt lookup (vLLM's ``ngram`` method, llama.cpp's lookup decoding):
the tokens that followed the last earlier occurrence of the history's final n-gram are proposed
as a draft, the model evaluates the draft in one batch, and the tokens it would have produced
anyway are kept.

Verification samples each draft row with the call's own sampler, in order, and keeps going while
the sampled token is the drafted one: the first token that differs is kept and ends the step.
For a deterministic draft this is the standard acceptance rule (Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding", with q the one-hot draft: accept with
probability p(d), else sample from p without d, renormalized: the same distribution as drawing
x ~ p and keeping it), and since the sampler draws once per kept token, in the same order, a
call gives the same tokens as without speculation, greedy or sampled with a seed, up to the
rounding difference of evaluating rows in a batch rather than one by one.

With ``method="draft_model"`` the draft is a smaller model's greedy continuation instead
(:mod:`.draft`); the acceptance rule is the same. Adapters apply to the target only: to the
evaluation of the draft rows as to any token.
A drafted row costs a row of the batch, its logits included; how many tokens to draft is decided
from that cost, measured on the machine, and the call's rate of kept drafts (:class:`DraftCosts`),
so speculation stays off where it would not pay (gemma-3-270m on a CPU: its 262k-word output
layer makes a row cost nearly a whole token).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidRequestError

#: methods of :class:`Speculative`: prompt lookup, a draft model (vLLM's names)
METHODS = ("ngram", "draft_model")


@dataclass(frozen=True)
class Speculative:
    """How to draft (vLLM's ``speculative_config`` names): ``method`` ``"ngram"`` (prompt lookup,
    the default) or ``"draft_model"`` (the default when ``model`` is given: the path of a GGUF
    draft model of the target's vocabulary, :mod:`.draft`), ``num_speculative_tokens`` drafted per
    step at most, the n-gram matched from ``prompt_lookup_max`` tokens down to
    ``prompt_lookup_min``; a draft model's draft ends where its most likely token's probability is
    below ``draft_p_min`` (llama.cpp's ``--draft-p-min``). ``adaptive`` (the default) drafts only
    as many tokens as pay for themselves (:class:`DraftCosts`); False drafts the most every time
    (to measure, or where a batch row is nearly free)."""

    method: str | None = None
    num_speculative_tokens: int = 8
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    adaptive: bool = True
    model: str | os.PathLike[str] | None = None
    draft_p_min: float = 0.75

    def __post_init__(self) -> None:
        if self.method is None:
            object.__setattr__(self, "method", "ngram" if self.model is None else "draft_model")
        problems = []
        if self.method == "draft_model" and self.model is None:
            problems.append("speculative method 'draft_model' needs model: the path of a GGUF draft model")
        if self.method == "ngram" and self.model is not None:
            problems.append("speculative model is a draft model: give method 'draft_model' (or leave method out)")
        if self.model is not None and not isinstance(self.model, (str, os.PathLike)):
            problems.append(f"speculative model must be a path, got {self.model!r}")
        p = self.draft_p_min
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            problems.append(f"speculative draft_p_min must be a number from 0 to 1, got {p!r}")
        if self.method not in METHODS:
            problems.append(f"speculative method {self.method!r}: use one of {', '.join(METHODS)}")
        for name, lo, hi in (("num_speculative_tokens", 1, 64), ("prompt_lookup_max", 1, 16),
                             ("prompt_lookup_min", 1, 16)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                problems.append(f"speculative {name} must be an integer from {lo} to {hi}, got {v!r}")
        if not isinstance(self.adaptive, bool):
            problems.append(f"speculative adaptive must be True or False, got {self.adaptive!r}")
        if not problems and self.prompt_lookup_min > self.prompt_lookup_max:
            problems.append("speculative prompt_lookup_min must not exceed prompt_lookup_max")
        if problems:
            raise InvalidRequestError("invalid speculative decoding settings", problems, param="speculative")

    @classmethod
    def of(cls, value: object) -> Speculative | None:
        """From a :class:`Speculative`, a method name (``"ngram"``; ``"draft_model"`` needs a
        :class:`Speculative` with its ``model``), or None / False (off)."""
        if value is None or value is False:
            return None
        if isinstance(value, Speculative):
            return value
        if isinstance(value, str):
            return cls(method=value)
        raise InvalidRequestError(f"speculative must be a method name or a Speculative, got {value!r}",
                                  param="speculative")


def moving_average(old: float | None, new: float) -> float:
    """The exponential moving average the cost figures keep (weight 0.2 on ``new``)."""
    return new if old is None else 0.8 * old + 0.2 * new


class DraftCosts:
    """What a draft costs on this machine, measured from the decodes themselves: ``single`` ms for
    a one-token step, ``per_row`` ms for each drafted row more (its logits included: with a large
    vocabulary the output layer alone can cost as much as the rest of a small model). Shared by a
    runtime's calls; updated as moving averages."""

    def __init__(self) -> None:
        self.single: float | None = None
        self.per_row: float | None = None

    def record(self, rows: int, ms: float) -> None:
        if rows == 1:
            self.single = moving_average(self.single, ms)
        elif self.single is not None:
            self.per_row = moving_average(self.per_row, max(0.0, (ms - self.single) / (rows - 1)))

    def best_length(self, accept: float, limit: int, draft_ms: float = 0.0) -> int:
        """The draft length that maximizes the expected tokens per millisecond, or 0 when no
        length beats plain decoding by 5%: a step drafting ``k`` tokens kept each with probability
        ``accept`` yields ``(1 - accept^(k+1)) / (1 - accept)`` tokens for
        ``single + k * (per_row + draft_ms)`` ms (``draft_ms``: what drafting a token costs, a
        draft model's decode; prompt lookup's is nil). Before the cost of a row is known, a short
        draft measures it."""
        if limit <= 0 or self.single is None:
            return 0
        if self.per_row is None:
            return min(limit, 4)
        best, best_k = 1.05, 0
        for k in range(1, limit + 1):
            tokens = (1 - accept ** (k + 1)) / (1 - accept) if accept < 1 else k + 1.0
            gain = tokens * self.single / (self.single + k * (self.per_row + draft_ms))
            if gain > best:
                best, best_k = gain, k
        return best_k


class Drafter(Protocol):
    """One call's source of drafts (:class:`PromptLookup`, :class:`.draft.ModelDrafter`): told each
    kept token (``extend``), asked for up to ``limit`` tokens (``draft``), told how many of a draft
    were kept (``record``); ``costs`` (or None) is told what each step cost; ``close`` at the end."""

    costs: DraftCosts | None

    def extend(self, tokens: Sequence[int]) -> None: ...
    def draft(self, limit: int) -> list[int]: ...
    def record(self, drafted: int, accepted: int) -> None: ...
    def close(self) -> None: ...


class DraftTally:
    """One call's kept and drafted tokens, and the draft length they call for."""

    spec: Speculative
    costs: DraftCosts | None
    drafted: int = 0
    accepted: int = 0

    def record(self, drafted: int, accepted: int) -> None:
        """This call's drafts so far: how many tokens were drafted, and kept."""
        self.drafted += drafted
        self.accepted += accepted

    @property
    def accept_rate(self) -> float:
        """Kept / drafted in this call, starting from 1 kept of 2 (a prior that lets it start)."""
        return (self.accepted + 1) / (self.drafted + 2)

    def length(self, limit: int, draft_ms: float = 0.0) -> int:
        """How many tokens to draft: at most ``min(limit, num_speculative_tokens)``, with
        ``costs`` and ``adaptive`` as many as pay for themselves at this call's rate of kept
        drafts (:meth:`DraftCosts.best_length`; ``draft_ms`` what drafting a token costs)."""
        k = min(limit, self.spec.num_speculative_tokens)
        if self.costs is not None and self.spec.adaptive:
            k = self.costs.best_length(self.accept_rate, k, draft_ms)
        return k


class PromptLookup(DraftTally):
    """Drafts from the history itself (prompt and generated tokens): an index of each n-gram's
    last end position, updated as tokens arrive, so a lookup costs O(n-gram sizes)."""

    def __init__(self, spec: Speculative, history: Sequence[int], costs: DraftCosts | None = None) -> None:
        self.spec = spec
        self.costs = costs
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}
        self.extend(history)

    def close(self) -> None:
        """Nothing to give back (a draft model's drafter gives back its context)."""

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(self.spec.prompt_lookup_min, self.spec.prompt_lookup_max + 1):
                if end - n - 1 >= 0:  # the n-gram that ended one token ago is now followed by t
                    self._last[tuple(self.tokens[end - n - 1 : end - 1])] = end - 1

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(limit, num_speculative_tokens)`` tokens that followed the longest n-gram
        ending the history where it occurred before; [] when none did. With ``costs``, as many as
        pay for themselves at this call's rate of kept drafts (:meth:`DraftCosts.best_length`),
        none where no draft would."""
        k = self.length(limit)
        if k <= 0:
            return []
        toks = self.tokens
        for n in range(self.spec.prompt_lookup_max, self.spec.prompt_lookup_min - 1, -1):
            if len(toks) <= n:
                continue
            at = self._last.get(tuple(toks[-n:]))
            if at is not None:
                return toks[at : at + k]
        return []
