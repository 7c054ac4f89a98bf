"""pydantic-ai (pinned in the dev extra) against ``edge-lora serve`` on gemma-3-270m with the
demo adapters: a plain run, ``output_type`` by its default output tool (tool calling, forced)
and as ``NativeOutput`` (``response_format``), and a function tool the agent calls."""

from __future__ import annotations

import pytest
from client_common import PROMPT, WEATHER_Q, Person, get_weather
from serving import gemma_server

pydantic_ai = pytest.importorskip("pydantic_ai")
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402

SETTINGS = {"temperature": 0.0, "max_tokens": 80}


@pytest.fixture(scope="module")
def url():
    with gemma_server() as u:
        yield u + "/v1"


def model(url: str, name: str) -> OpenAIChatModel:
    return OpenAIChatModel(name, provider=OpenAIProvider(base_url=url, api_key="none"))


def test_a_plain_run(url):
    out = pydantic_ai.Agent(model(url, "json"), model_settings=SETTINGS).run_sync(PROMPT).output
    assert out.startswith("{") and "Sofia" in out


def test_output_type_by_output_tool_and_natively(url):
    by_tool = pydantic_ai.Agent(model(url, "gemma"), output_type=Person, model_settings=SETTINGS, retries=0)
    got = by_tool.run_sync(PROMPT).output
    assert isinstance(got, Person) and got.name == "Sofia"
    native = pydantic_ai.Agent(model(url, "json"), output_type=pydantic_ai.NativeOutput(Person),
                               model_settings=SETTINGS, retries=0)
    got = native.run_sync(PROMPT).output
    assert isinstance(got, Person) and (got.name, got.age) == ("Sofia", 29)


def test_a_function_tool_is_called_and_its_result_sent_back(url):
    calls = []

    def weather(city: str) -> str:
        calls.append(city)
        return get_weather(city)

    agent = pydantic_ai.Agent(model(url, "gemma"), tools=[weather], output_type=Person, retries=0,
                              model_settings={**SETTINGS, "max_tokens": 120, "parallel_tool_calls": False})
    # the output tool and the function tool are offered together, a call forced: the tiny base
    # keeps calling the function tool (measured), so a request limit ends the run; what matters
    # here is the tool-calling path: the call made, run, and its result sent back
    with pydantic_ai.capture_run_messages() as messages:
        try:
            agent.run_sync(WEATHER_Q, usage_limits=pydantic_ai.UsageLimits(request_limit=2))
        except pydantic_ai.exceptions.UsageLimitExceeded:
            pass
    parts = [p for m in messages for p in m.parts]
    names = [p.tool_name for p in parts if type(p).__name__ == "ToolCallPart"]
    assert names and names[0] == "weather" and set(names) <= {"weather", "final_result"}  # greedy: measured
    assert calls and isinstance(calls[0], str)
    assert any(type(p).__name__ == "ToolReturnPart" and p.tool_name == "weather" for p in parts)
    assert len(messages) >= 3  # request, the call, the request carrying its result
