"""Tool calling in the chat templates llama.cpp ships (``models/templates`` in the engine's source
tree; no model needed): each family's call layout is found, a prompt with tools and a history of
calls and results renders exactly as transformers' ``render_jinja_template`` renders it (the
reference), and the calls a template writes for an assistant turn parse back to the same calls.
Templates whose layout is not in the table are refused, never guessed."""

from __future__ import annotations

import json

import pytest

from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.chat import ChatTemplate
from edge_lora.runtime.tool_formats import force_grammar
from edge_lora.runtime.tools import ToolRequest
from llama_cpp_base import require_vendored_llama_cpp
from own_templates import OWN

#: template file -> the layout its model writes calls in
LAYOUTS = {
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral-json",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral",
    "unsloth-mistral-Devstral-Small-2507": "mistral",
    "ibm-granite-granite-3.3-2B-Instruct": "granite",
    "unsloth-Apriel-1.5": "apriel",
    "NVIDIA-Nemotron-Nano-v2": "nemotron",
    "ibm-granite-granite-4.0": "hermes",
    "mistralai-Ministral-3-14B-Reasoning-2512": "mistral",
    "google-gemma-2-2b-it": "generic",
    "microsoft-Phi-3.5-mini-instruct": "generic",
    "phi-4-mini-layout": "phi4",  # written here (own_templates.py): llama.cpp's pinned tree lacks Phi-4-mini's
}
#: templates that show tools in layouts the table does not parse (XML arguments, Harmony, ...)
REFUSED = ["Qwen3-Coder", "GLM-4.6", "google-gemma-4-31B-it", "openai-gpt-oss-120b", "moonshotai-Kimi-K2"]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Add two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}}},
]
CALLS = [("get_weather", {"city": "Paris", "unit": "celsius"}), ("add", {"a": 2, "b": 3.5})]


def template(name: str) -> ChatTemplate:
    src = OWN.get(name) or (require_vendored_llama_cpp() / "models" / "templates" / f"{name}.jinja").read_text()
    return ChatTemplate(src, bos_token="<s>", eos_token="</s>")


def history(n_calls: int) -> list[dict]:
    """A user turn, the assistant's calls (OpenAI's wire form: arguments as JSON text; Mistral's
    9-character ids), their results, the assistant's answer, then a user turn."""
    ids = [f"call{i}abcd" for i in range(n_calls)]
    calls = [{"id": ids[i], "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
             for i, (n, a) in enumerate(CALLS[:n_calls])]
    results = [{"role": "tool", "tool_call_id": ids[i], "name": CALLS[i][0], "content": f"result {i}"}
               for i in range(n_calls)]
    return [{"role": "user", "content": "Weather in Paris, and 2 + 3.5?"},
            {"role": "assistant", "content": None, "tool_calls": calls}, *results,
            {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "And in Rome?"}]


@pytest.mark.parametrize("name, layout", LAYOUTS.items())
def test_each_template_has_its_layout(name, layout):
    assert template(name).tool_format.name == layout


@pytest.mark.parametrize("name", REFUSED)
def test_a_layout_not_in_the_table_is_refused(name):
    with pytest.raises(InvalidRequestError, match="does not parse") as e:
        _ = template(name).tool_format
    assert e.value.param == "tools"


@pytest.mark.parametrize("name", [n for n, f in LAYOUTS.items() if f != "generic"])
def test_tools_and_a_call_history_render_as_transformers_renders_them(name):
    from transformers.utils.chat_template_utils import render_jinja_template

    t = template(name)
    n = 1 if t.tool_format.name == "llama3" else 2  # Llama 3's template refuses parallel calls
    msgs = history(n)
    ours = t.render(msgs, tools=ToolRequest.of(TOOLS))
    # transformers is given the arguments as objects, as its chat template docs ask (and vLLM converts)
    ref_msgs = json.loads(json.dumps(msgs))
    for m in ref_msgs:
        for c in m.get("tool_calls") or ():
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        if m.get("content") is None:
            m["content"] = ""
    (ref,), _ = render_jinja_template([ref_msgs], tools=TOOLS, chat_template=t.source, add_generation_prompt=True,
                                      bos_token="<s>", eos_token="</s>")
    assert ours == ref
    assert "get_weather" in ours and "result 0" in ours


@pytest.mark.parametrize("name", [n for n, f in LAYOUTS.items() if f not in ("generic", "granite")])
def test_the_calls_a_template_writes_parse_back(name):
    """The text after the generation prompt, up to the turn's end, is what the model was trained
    to write: parsed, it gives the same calls (names and argument objects)."""
    t = template(name)
    n = 1 if t.tool_format.name == "llama3" else 2
    msgs = history(n)[:2]
    head = t.render(msgs[:1], tools=ToolRequest.of(TOOLS))
    full = t.render(msgs, tools=ToolRequest.of(TOOLS), add_generation_prompt=False)
    # after the generation prompt; Nemotron's prompt opens a thought its history does not show
    answer = full[len(head):] if full.startswith(head) else full[full.rindex(msgs[0]["content"]):]
    for end in ("</s>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|end_of_text|>", "<SPECIAL_12>"):  # turn ends
        answer = answer.split(end)[0]
    content, calls = t.tool_format.parse(answer)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == CALLS[:n]
    # Qwen3 writes an empty thought before the calls; Nemotron's role header is left in the text
    assert content in ("", "<think>\n\n</think>") or content.startswith(msgs[0]["content"])


def test_a_template_without_tools_gets_them_in_the_system_turn_in_the_generic_form():
    t = template("google-gemma-2-2b-it")  # Gemma 2's template has no system role (it raises on one)
    req = ToolRequest.of(TOOLS, "required", parallel_tool_calls=False)
    assert not t.has_system_role
    two = t.render(history(2), tools=req)  # the instructions open the first user turn; results joined
    assert two.startswith("<s><start_of_turn>user\nYou can call these tools") and "Weather in Paris" in two
    assert '"result 0"}}\n\n{"tool_response"' in two
    gemma3 = ChatTemplate(None, bos_token="<bos>", eos_token="<eos>", is_special_token=lambda s: s == "<start_of_turn>")
    text = gemma3.render(history(2), tools=req)
    assert text.count('"name": "get_weather"') == 3  # in the tool list, the earlier call and its result
    assert "You must call a tool now" in text and "holding one call" in text
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, ' in text
    assert '{"tool_response": {"tool_call_id": "call0abcd", "name": "get_weather", "content": "result 0"}}' in text
    assert text.endswith("<start_of_turn>model\n")


def test_tool_choice_none_shows_no_tools():
    t = template("Qwen-Qwen2.5-7B-Instruct")
    msgs = [{"role": "user", "content": "Hi"}]
    assert t.render(msgs, tools=ToolRequest.of(TOOLS, "none")) == t.render(msgs)
    assert "get_weather" in t.render(msgs, tools=ToolRequest.of(TOOLS))


@pytest.mark.parametrize("name", [n for n, f in LAYOUTS.items() if f != "generic"])
def test_the_forcing_grammar_holds_every_tool_and_its_layout(name):
    t = template(name)
    gbnf, root = force_grammar(t.tool_format, ToolRequest.of(TOOLS, "required"))
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert root in rules and "get_weather" in rules[root] + gbnf and "add" in gbnf
    one, _ = force_grammar(t.tool_format, ToolRequest.of(TOOLS, {"type": "function", "function": {"name": "add"}}))
    assert "add" in one and "get_weather" not in one


def test_two_tools_keep_their_own_defs_in_the_grammar():
    item = lambda prop, kind: {"type": "object", "properties": {"x": {"$ref": "#/$defs/Item"}}, "required": ["x"],  # noqa: E731
                               "$defs": {"Item": {"type": "object", "properties": {prop: {"type": kind}},
                                                  "required": [prop]}}}
    tools = [{"type": "function", "function": {"name": "a", "parameters": item("n", "integer")}},
             {"type": "function", "function": {"name": "b", "parameters": item("s", "string")}}]
    gbnf, _root = force_grammar(template("Qwen-Qwen2.5-7B-Instruct").tool_format, ToolRequest.of(tools, "required"))
    rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines())
    assert "a-Item" in rules and "b-Item" in rules and rules["a-Item"] != rules["b-Item"]


def test_template_kwargs_may_not_replace_what_the_call_gives():
    t = template("Qwen-Qwen3-0.6B")
    with pytest.raises(InvalidRequestError, match="may not set"):
        t.render([{"role": "user", "content": "Hi"}], template_kwargs={"messages": []})
    assert "<think>" in t.render([{"role": "user", "content": "Hi"}], template_kwargs={"enable_thinking": False})


def test_generation_tags_and_tools_without_descriptions():
    t = template("LFM2.5-8B-A1B")  # {% generation %}: transformers' assistant-mask tag
    assert "Hi" in t.render([{"role": "user", "content": "Hi"}])
    hermes = template("NousResearch-Hermes-3-Llama-3.1-8B-tool_use")
    bare = [{"type": "function", "function": {"name": "now"}}]
    assert '"now"' in hermes.render([{"role": "user", "content": "Hi"}], tools=ToolRequest.of(bare))
