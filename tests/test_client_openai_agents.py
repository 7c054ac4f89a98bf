"""openai-agents (pinned in the dev extra) against ``edge-lora serve`` on gemma-3-270m with the
demo adapters, tracing off (nothing leaves the machine): its default Responses model and the
Chat Completions model, ``output_type`` (structured output), and a function tool forced once
(``tool_choice="required"``, reset after the call, the agents SDK's default) whose result the
agent answers from."""

from __future__ import annotations

import pytest
from client_common import PROMPT, WEATHER_Q, Person, get_weather
from serving import gemma_server

agents = pytest.importorskip("agents")


@pytest.fixture(scope="module")
def url():
    agents.set_tracing_disabled(True)
    with gemma_server() as u:
        yield u + "/v1"


def model(url: str, name: str, api: str):
    client = agents.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    if api == "responses":
        return agents.OpenAIResponsesModel(model=name, openai_client=client)
    return agents.OpenAIChatCompletionsModel(model=name, openai_client=client)


SETTINGS = agents.ModelSettings(temperature=0.0, max_tokens=80)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_plain_and_structured_runs(url, api):
    plain = agents.Agent(name="extract", model=model(url, "json", api), model_settings=SETTINGS)
    out = agents.Runner.run_sync(plain, PROMPT).final_output
    assert out.startswith("{") and "Sofia" in out
    typed = agents.Agent(name="extract", model=model(url, "json", api), model_settings=SETTINGS, output_type=Person)
    got = agents.Runner.run_sync(typed, PROMPT).final_output
    assert isinstance(got, Person) and (got.name, got.age) == ("Sofia", 29)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_a_forced_function_tool_then_an_answer(url, api):
    calls = []

    @agents.function_tool
    def weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return get_weather(city)

    # over Responses the SDK refuses an answer cut by max_tokens (``incomplete``), which the tiny
    # base's answer after the result is (measured): there the agent stops at the tool's output
    behavior = "stop_on_first_tool" if api == "responses" else "run_llm_again"
    agent = agents.Agent(name="weather", model=model(url, "gemma", api), tools=[weather], tool_use_behavior=behavior,
                         model_settings=agents.ModelSettings(temperature=0.0, max_tokens=60, tool_choice="required",
                                                             parallel_tool_calls=False))
    result = agents.Runner.run_sync(agent, WEATHER_Q, max_turns=4)
    kinds = [type(i).__name__ for i in result.new_items]
    assert kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"] and calls and isinstance(calls[0], str)
    if api == "responses":
        assert result.final_output == get_weather(calls[0])
    else:  # the result went back and the model answered (tool_choice reset after the call)
        assert kinds[-1] == "MessageOutputItem" and isinstance(result.final_output, str)
