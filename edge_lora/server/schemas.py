"""Request bodies of the server's protocols; unknown fields are refused (400).

The generation options are typed here, not ranged: their ranges and defaults are the runtime's
one schema (:data:`edge_lora.runtime.request.OPTIONS`), checked when the call is started.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..runtime.chat import ROLES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    role: Literal[ROLES]  # type: ignore[valid-type]  # the runtime's roles (edge_lora.runtime.chat)
    content: str
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (vLLM, llama.cpp server)
    min_p: float | None = None  # extension
    repeat_penalty: float | None = None  # extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None
    # OpenAI penalties: only the neutral value is accepted (llama.cpp's are not the same formula)
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0)
    #: extension: a mix of adapters with scales; ``model`` must then name the base
    adapters: dict[str, float] | None = None

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


class CompletionRequest(_Sampling):
    prompt: str
    echo: bool = Field(default=False, description="only false is supported")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v


class LoadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)
    scale: float = 1.0  # extension: the adapter's default scale


class UnloadAdapterRequest(_Strict):
    lora_name: str = Field(min_length=1, max_length=128)
