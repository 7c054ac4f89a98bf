"""What a generation asks for (:class:`SamplingParams`) and what it gives back (:class:`Completion`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import InvalidRequestError


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
