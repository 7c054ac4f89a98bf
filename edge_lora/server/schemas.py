"""Request bodies of the server's protocols; unknown fields are refused (400).

The generation options are typed here, not ranged: their ranges and defaults are the runtime's
one schema (:data:`edge_lora.runtime.request.OPTIONS`), checked when the call is started.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..runtime.chat import ROLES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are read (the runtime refuses the
    others by name: :func:`edge_lora.runtime.chat.check_messages`)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(_Strict):
    name: str
    arguments: str = "{}"


class ToolCallItem(_Strict):
    """An assistant's earlier call, as OpenAI returned it."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """OpenAI's chat message; the runtime checks roles and fields together
    (:func:`edge_lora.runtime.chat.check_messages`)."""

    role: Literal[(*ROLES, "developer")]  # type: ignore[valid-type]  # the runtime's roles (edge_lora.runtime.chat)
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaSpec(_Strict):
    """OpenAI's ``response_format.json_schema``. ``strict`` is accepted either way: the schema is
    always enforced by the grammar, or refused when it cannot be."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """OpenAI's ``response_format``: ``text``, ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _spec(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object ({'name', 'schema', 'strict'})")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only read with type json_schema, not {self.type}")
        return self


class LoraEntry(_Strict):
    """llama.cpp server's per-request ``lora`` entry: an index into ``GET /lora-adapters``."""

    id: int = Field(ge=0)
    scale: float


class _Described(_Strict):
    """Fields that only describe a request (OpenAI's): accepted and ignored."""

    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


class _Sampling(_Described):
    """What OpenAI's chat and completions requests share. ``null`` is the default everywhere (as
    OpenAI reads it). Fields that only describe the request (``user``, ``metadata``, ``store``,
    ``service_tier``, ``prompt_cache_key``, ``safety_identifier``, ``reasoning_effort``) are accepted
    and ignored; any other field outside the schema is a 400 naming it."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (vLLM, llama.cpp server)
    min_p: float | None = None  # extension
    repeat_penalty: float | None = None  # extension
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=16)
    #: described, not acted on (with :class:`_Described`'s)
    store: bool | None = None
    reasoning_effort: str | None = None
    #: extension: a mix of adapters with scales; ``model`` must then name the base
    adapters: dict[str, float] | None = None
    #: extension (llama.cpp's server): adapters by their index in ``GET /lora-adapters``
    lora: list[LoraEntry] | None = None
    response_format: ResponseFormat | None = None
    #: extensions (llama.cpp's server): a JSON schema or a GBNF grammar the output must match
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and (len(v) > 4 or not all(v)):
            raise ValueError("at most 4 non-empty stop strings")
        if v == "":
            raise ValueError("stop must not be empty")
        return v


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    #: extra chat template variables (vLLM's and llama.cpp server's name): ``{"enable_thinking": false}``
    chat_template_kwargs: dict[str, Any] | None = None
    #: OpenAI's function tools, checked by the runtime (:class:`edge_lora.runtime.tools.ToolRequest`)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    #: one prompt or several (each gets ``n`` choices, indexed prompt by prompt)
    prompt: str | list[str]
    echo: bool | None = Field(default=None, description="only false is supported")
    #: the number of most likely tokens listed with each generated one (OpenAI: at most 5)
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= 16:
            raise ValueError("a prompt list holds 1 to 16 prompts (token-id prompts are not supported)")
        return v


class LoadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)
    scale: float = 1.0  # extension: the adapter's default scale
    #: extension: the chat-template variables calls with this adapter get unless they give them
    chat_template_kwargs: dict[str, Any] | None = None


class UnloadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1, max_length=128)


class ResponsesRequest(_Described):
    """OpenAI's ``POST /v1/responses`` body (:mod:`.responses`). Descriptive fields (``user``,
    ``metadata``, ``service_tier``, ``prompt_cache_key``, ``safety_identifier``, ``reasoning``,
    ``truncation``, ``include``) are accepted and ignored; ``store: false`` keeps the response
    out of the in-memory store."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None  # extension, as on chat
    stream: bool | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    include: list[str] | None = None
    #: extension: a mix of adapters with scales; ``model`` must then name the base
    adapters: dict[str, float] | None = None

    @field_validator("background")
    @classmethod
    def _no_background(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("background responses are not supported: ask without background, or stream")
        return v
