"""smolagents (pinned in the dev extra) against ``edge-lora serve`` on gemma-3-270m with the demo
adapters: ``OpenAIServerModel`` generating plain and with ``response_format`` (structured output),
and a ``ToolCallingAgent`` (tool_choice "required", smolagents' default) whose first step calls a
tool, runs it and keeps its observation."""

from __future__ import annotations

import json

import pytest
from client_common import PROMPT, WEATHER_Q, Person, get_weather
from serving import gemma_server

smolagents = pytest.importorskip("smolagents")


@pytest.fixture(scope="module")
def url():
    with gemma_server() as u:
        yield u + "/v1"


def model(url: str, name: str, **kw):
    return smolagents.OpenAIServerModel(model_id=name, api_base=url, api_key="none", temperature=0.0, max_tokens=80, **kw)


def test_generate_plain_and_structured(url):
    msgs = [smolagents.ChatMessage(role="user", content=[{"type": "text", "text": PROMPT}])]  # smolagents' parts
    assert "Sofia" in model(url, "json").generate(msgs).content
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": Person.model_json_schema(), "strict": True}}
    got = Person.model_validate(json.loads(model(url, "json").generate(msgs, response_format=fmt).content))
    assert (got.name, got.age) == ("Sofia", 29)


def test_a_tool_calling_agent_calls_a_tool(url):
    calls = []

    @smolagents.tool
    def weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: the city's name
        """
        calls.append(city)
        return get_weather(city)

    # one call per step: with parallel calls the tiny base adds a final_answer beside the tool,
    # which smolagents refuses (measured); it then keeps calling the tool until max_steps
    agent = smolagents.ToolCallingAgent(tools=[weather], model=model(url, "gemma", parallel_tool_calls=False),
                                        max_steps=2, verbosity_level=0)
    agent.run(WEATHER_Q)
    first = [s for s in agent.memory.steps if type(s).__name__ == "ActionStep"][0]
    assert [c.name for c in first.tool_calls] == ["weather"] and first.tool_calls[0].arguments == {"city": "Paris"}
    assert calls == ["Paris", "Paris"] and "18 C and clear in Paris" in first.observations
