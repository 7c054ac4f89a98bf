"""What a generation asks for (:class:`SamplingParams`) and what it gives back (:class:`Completion`,
or a :class:`TextStream` of pieces that ends with one)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validate import Problems, int_problem, number_problem
from ..cancel import CancelToken
from ..errors import InvalidRequestError
from .grammar import Grammar
from .tools import ToolCall, ToolRequest


@dataclass(frozen=True)
class Option:
    """One generation option: its default and its range (the one definition the library, the CLI
    and every server protocol validate with)."""

    default: object
    kind: type  # int or float
    lo: float | None = None
    hi: float | None = None
    optional: bool = False  # None is a value (seed: a random one)
    help: str = ""


#: the generation options, their defaults and ranges. Sampling follows llama.cpp's chain
#: (``common/sampling.cpp``): penalties, top-k, top-p, min-p, temperature, then a seeded draw.
OPTIONS: dict[str, Option] = {
    "max_tokens": Option(256, int, 1, None, help="tokens to generate at most"),
    "temperature": Option(0.8, float, 0.0, 100.0, help="temperature; 0 is greedy"),
    "top_p": Option(0.95, float, 0.0, 1.0, help="top-p (nucleus) sampling; 1 disables"),
    "top_k": Option(40, int, 0, None, help="top-k sampling; 0 disables"),
    "min_p": Option(0.05, float, 0.0, 1.0, help="min-p sampling; 0 disables"),
    "repeat_penalty": Option(1.0, float, 1e-6, 100.0, help="repetition penalty; 1 disables"),
    "repeat_last_n": Option(64, int, 0, None, help="tokens the penalties look back over"),
    "presence_penalty": Option(0.0, float, -2.0, 2.0, help="OpenAI's presence penalty over the last repeat_last_n tokens"),
    "frequency_penalty": Option(0.0, float, -2.0, 2.0, help="OpenAI's frequency penalty over the last repeat_last_n tokens"),
    "seed": Option(None, int, None, None, optional=True, help="sampling seed"),
}


@dataclass(frozen=True)
class SamplingParams:
    """Validated generation options (the keyword arguments of the text APIs); defaults and
    ranges are :data:`OPTIONS`'. ``stop``: strings that end the generation (not returned).
    ``grammar``: what every generated token must keep matching (structured outputs); with one,
    the generation ends only where the grammar is complete (or at ``max_tokens``)."""

    max_tokens: int = OPTIONS["max_tokens"].default  # type: ignore[assignment]
    temperature: float = OPTIONS["temperature"].default  # type: ignore[assignment]
    top_p: float = OPTIONS["top_p"].default  # type: ignore[assignment]
    top_k: int = OPTIONS["top_k"].default  # type: ignore[assignment]
    min_p: float = OPTIONS["min_p"].default  # type: ignore[assignment]
    repeat_penalty: float = OPTIONS["repeat_penalty"].default  # type: ignore[assignment]
    repeat_last_n: int = OPTIONS["repeat_last_n"].default  # type: ignore[assignment]
    presence_penalty: float = OPTIONS["presence_penalty"].default  # type: ignore[assignment]
    frequency_penalty: float = OPTIONS["frequency_penalty"].default  # type: ignore[assignment]
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: Grammar | None = None
    #: (token id, bias added to its logit), OpenAI's ``logit_bias``: -100 bans a token, 100 forces it
    logit_bias: tuple[tuple[int, float], ...] = ()
    #: None: no log-probabilities; k (0 to 20): each generated token's, with the k most likely
    logprobs: int | None = None

    @property
    def penalized(self) -> bool:
        """Whether llama.cpp's penalties stage runs (a non-neutral repeat, presence or frequency penalty)."""
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def __post_init__(self) -> None:
        problems = Problems()
        for name, opt in OPTIONS.items():
            value = getattr(self, name)
            if value is None and opt.optional:
                continue
            check = int_problem if opt.kind is int else number_problem
            problems.add(check(name, value, lo=opt.lo, hi=opt.hi), param=name)  # type: ignore[arg-type]
        if not all(isinstance(s, str) and s for s in self.stop):
            problems.add(f"stop must be a list of non-empty strings, got {list(self.stop)!r}", param="stop")
        if self.grammar is not None and not isinstance(self.grammar, Grammar):
            problems.add(f"grammar must be a Grammar, got {type(self.grammar).__name__}", param="grammar")
        if self.logprobs is not None:
            problems.add(int_problem("logprobs", self.logprobs, lo=0, hi=20), param="logprobs")
        for entry in self.logit_bias:
            tok, bias = entry if isinstance(entry, tuple) and len(entry) == 2 else (None, None)
            problems.add(int_problem("a logit_bias token id", tok, lo=0), param="logit_bias")
            problems.add(number_problem(f"logit_bias[{tok}]", bias, lo=-100.0, hi=100.0), param="logit_bias")
        problems.raise_if_any(InvalidRequestError, "invalid generation options")

    @classmethod
    def build(cls, stop: str | Sequence[str] | None = None, *, json_schema: Mapping[str, Any] | str | None = None,
              grammar: Grammar | str | None = None, logit_bias: Mapping[int | str, float] | None = None,
              logprobs: int | None = None, **kw: object) -> SamplingParams:
        """From keyword options as the text APIs take them: ``None`` means the default, ``stop``
        may be one string, ``json_schema`` a JSON schema (dict or JSON text) the output must
        match, ``grammar`` GBNF text (or a :class:`Grammar`); at most one of the last two.
        ``logit_bias`` maps token ids (ints, or their decimal text as OpenAI's JSON has them) to
        biases in [-100, 100]. ``logprobs``: record each generated token's log-probability and
        the ``logprobs`` most likely alternatives (:class:`TokenLogprob`).
        Raises :class:`InvalidRequestError` for unknown names and bad values, every problem at once."""
        unknown = sorted(set(kw) - set(OPTIONS))
        if unknown:
            raise InvalidRequestError(
                f"unknown generation option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join([*OPTIONS, 'stop', 'json_schema', 'grammar', 'logit_bias', 'logprobs'])}",
                param=unknown[0])
        if stop is not None and not isinstance(stop, (str, Sequence)):
            raise InvalidRequestError(f"stop must be a string or a list of strings, got {stop!r}", param="stop")
        if json_schema is not None and grammar is not None:
            raise InvalidRequestError("give json_schema or grammar, not both", param="grammar")
        if json_schema is not None:
            grammar = Grammar.from_json_schema(json_schema)
        elif isinstance(grammar, str):
            grammar = Grammar(grammar)
        stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
        if logit_bias is not None and not isinstance(logit_bias, Mapping):
            raise InvalidRequestError("logit_bias must map token ids to biases", param="logit_bias")
        bias = tuple((int(t) if isinstance(t, str) and t.isascii() and t.isdigit() else t, b) for t, b in (logit_bias or {}).items())
        return cls(stop=stops, grammar=grammar, logit_bias=bias, logprobs=logprobs,  # type: ignore[arg-type]
                   **{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class GenerationRequest:
    """One call, whatever asked for it (the library, the CLI, a server protocol): a ``prompt``
    (raw text) or ``messages`` (a conversation, formatted with the base's chat template), the
    ``adapters`` (name to scale; ``None`` a scale: the adapter's default; ``None`` or ``{}``: the
    base alone), the ``params`` (a grammar among them: structured outputs) and a ``cancel`` token.
    With messages: ``tools`` (tool calling, :mod:`.tools`) and ``template_kwargs`` (extra chat
    template variables, such as ``enable_thinking``)."""

    prompt: str | None = None
    messages: Sequence[Mapping[str, Any]] | None = None
    adapters: Mapping[str, float | None] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    cancel: CancelToken | None = None
    tools: ToolRequest | None = None
    template_kwargs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("a generation takes a prompt or messages, not both or neither")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(self.prompt).__name__}", param="prompt")
        if self.prompt is not None and (self.tools is not None or self.template_kwargs):
            raise InvalidRequestError("tools and template_kwargs apply to chat messages, not to a raw prompt",
                                      param="tools" if self.tools is not None else "template_kwargs")
        if self.template_kwargs is not None and not (
                isinstance(self.template_kwargs, Mapping) and all(isinstance(k, str) for k in self.template_kwargs)):
            raise InvalidRequestError("template_kwargs must map names to values", param="template_kwargs")
        if self.tools is not None and self.tools.offered and self.params.grammar is not None:
            raise InvalidRequestError("give tools or a grammar (json_schema, response_format), not both: a forced "
                                      "tool call has its own grammar", param="tools")

    @classmethod
    def of(cls, *, prompt: str | None = None, messages: Sequence[Mapping[str, Any]] | None = None,
           adapters: Mapping[str, float | None] | None = None, cancel: CancelToken | None = None,
           tools: Sequence[Any] | None = None, tool_choice: str | Mapping[str, Any] | None = None,
           parallel_tool_calls: bool | None = None, template_kwargs: Mapping[str, Any] | None = None,
           **options: Any) -> GenerationRequest:
        """From the text APIs' keyword options (:meth:`SamplingParams.build`); ``tools`` in
        OpenAI's form with ``tool_choice`` and ``parallel_tool_calls`` (:meth:`ToolRequest.of`)."""
        if tools is None and (tool_choice is not None or parallel_tool_calls is not None):
            raise InvalidRequestError("tool_choice and parallel_tool_calls need tools", param="tool_choice")
        request = ToolRequest.of(tools, tool_choice, parallel_tool_calls) if tools is not None else None
        return cls(prompt, messages, adapters, SamplingParams.build(**options), cancel, request, template_kwargs)


@dataclass(frozen=True)
class Timings:
    prompt_ms: float  # evaluating the prompt tokens not found in the cache
    ttft_ms: float  # call start to the first generated token
    decode_ms: float  # generating after the first token
    total_ms: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's natural-log probability under the model (its softmax over the
    vocabulary, before any sampling stage, as OpenAI and vLLM report it), its bytes, and the most
    likely tokens there as (id, bytes, logprob), best first."""

    token: int
    bytes: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    """The result of one generation."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (end of generation or a stop string), "length", "cancelled" or "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens whose KV was reused (same adapter set) or restored
    adapters: dict[str, float]
    timings: Timings = field(repr=False)
    #: the calls the model made (tools offered); ``finish_reason`` is then ``"tool_calls"``
    tool_calls: tuple[ToolCall, ...] = ()
    #: the answer without its tool calls (``text`` itself when no tools were offered)
    content: str | None = None
    #: a thinking model's thought (:mod:`.reasoning`), kept out of ``content``; None without one
    reasoning_content: str | None = None
    #: one per generated token when ``logprobs`` was asked for
    logprobs: tuple[TokenLogprob, ...] = field(default=(), repr=False)
    #: speculative decoding: tokens drafted, and how many of them the model kept
    draft_tokens: int = 0
    draft_accepted: int = 0

    def __post_init__(self) -> None:
        if self.content is None:
            object.__setattr__(self, "content", self.text)

    @property
    def tokens_per_second(self) -> float:
        n = self.completion_tokens - 1
        return n / (self.timings.decode_ms / 1000) if n > 0 and self.timings.decode_ms > 0 else 0.0


class TextStream:
    """Iterator of text pieces; ``result`` holds the :class:`Completion` once it is exhausted.

    Closing it early (or dropping it) stops the generation and frees its context.
    """

    def __init__(self, gen: Iterator[str]) -> None:
        self._gen = gen
        self.result: Completion | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            raise

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]

    def consume(self) -> Completion:
        """Run to the end and return the :class:`Completion`."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result
