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

Adapters apply to the draft's evaluation as to any token (the draft costs no model of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidRequestError

#: methods of :class:`Speculative`
METHODS = ("ngram",)


@dataclass(frozen=True)
class Speculative:
    """How to draft (vLLM's ``speculative_config`` names): ``method`` ``"ngram"`` (prompt lookup),
    ``num_speculative_tokens`` drafted per step at most, the n-gram matched from
    ``prompt_lookup_max`` tokens down to ``prompt_lookup_min``."""

    method: str = "ngram"
    num_speculative_tokens: int = 8
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"speculative method {self.method!r}: use one of {', '.join(METHODS)}")
        for name, lo, hi in (("num_speculative_tokens", 1, 64), ("prompt_lookup_max", 1, 16),
                             ("prompt_lookup_min", 1, 16)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                problems.append(f"speculative {name} must be an integer from {lo} to {hi}, got {v!r}")
        if not problems and self.prompt_lookup_min > self.prompt_lookup_max:
            problems.append("speculative prompt_lookup_min must not exceed prompt_lookup_max")
        if problems:
            raise InvalidRequestError("invalid speculative decoding settings", problems, param="speculative")

    @classmethod
    def of(cls, value: object) -> Speculative | None:
        """From a :class:`Speculative`, a method name (``"ngram"``), or None / False (off)."""
        if value is None or value is False:
            return None
        if isinstance(value, Speculative):
            return value
        if isinstance(value, str):
            return cls(method=value)
        raise InvalidRequestError(f"speculative must be a method name or a Speculative, got {value!r}",
                                  param="speculative")


class PromptLookup:
    """Drafts from the history itself (prompt and generated tokens): an index of each n-gram's
    last end position, updated as tokens arrive, so a lookup costs O(n-gram sizes)."""

    def __init__(self, spec: Speculative, history: Sequence[int]) -> None:
        self.spec = spec
        self.tokens: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}
        self.extend(history)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(self.spec.prompt_lookup_min, self.spec.prompt_lookup_max + 1):
                if end - n - 1 >= 0:  # the n-gram that ended one token ago is now followed by t
                    self._last[tuple(self.tokens[end - n - 1 : end - 1])] = end - 1

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(limit, num_speculative_tokens)`` tokens that followed the longest n-gram
        ending the history where it occurred before; [] when none did."""
        k = min(limit, self.spec.num_speculative_tokens)
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
