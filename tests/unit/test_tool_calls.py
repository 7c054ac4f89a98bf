"""Tool calling without a model: OpenAI's tools and tool_choice checked (every problem at once),
each layout's parser on what models write (content around calls, several calls, a malformed
call left as content), the stream that holds calls back, and chat messages in OpenAI's forms."""

from __future__ import annotations

import json

import pytest

from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.chat import check_messages
from edge_lora.runtime.request import Completion, TextStream, Timings
from edge_lora.runtime.tool_formats import (
    APRIEL, GENERIC, GRANITE, HERMES, LLAMA3, MISTRAL, MISTRAL_JSON, gbnf_literal, with_tool_calls,
)
from edge_lora.runtime.tools import ToolRequest

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def calls_of(fmt, text):
    content, calls = fmt.parse(text)
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


def test_tool_request_defaults_and_choices():
    r = ToolRequest.of([WEATHER])
    assert (r.choice, r.parallel, [t.name for t in r.offered], r.forced) == ("auto", True, ["get_weather"], ())
    assert ToolRequest.of([WEATHER], "none").offered == ()
    assert [t.name for t in ToolRequest.of([WEATHER], "required").forced] == ["get_weather"]
    named = ToolRequest.of([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, False)
    assert named.choice == "get_weather" and not named.parallel and len(named.forced) == 1
    no_params = ToolRequest.of([{"type": "function", "function": {"name": "now"}}])
    assert no_params.tools[0].parameters == {"type": "object", "properties": {}}
    assert no_params.tools[0].as_openai()["function"]["parameters"] == {"type": "object", "properties": {}}


def test_tool_request_reports_every_problem_at_once():
    bad = [
        WEATHER, WEATHER,  # a duplicate
        {"type": "retrieval"},
        {"type": "function", "function": {"name": "has space"}},
        {"type": "function", "function": {"name": "age", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}},
    ]
    with pytest.raises(InvalidRequestError) as e:
        ToolRequest.of(bad, {"type": "function", "function": {"name": "missing"}}, "yes")  # type: ignore[arg-type]
    text = str(e.value)
    for needle in ("'get_weather' is given twice", "tools[2]", "'has space' is not a function name",
                   "tools[4].function.parameters: $.properties.n.minimum", "names 'missing'",
                   "parallel_tool_calls must be true or false"):
        assert needle in text
    assert e.value.param == "tools"
    with pytest.raises(InvalidRequestError, match="one of auto, none, required"):
        ToolRequest.of([WEATHER], "always")
    with pytest.raises(InvalidRequestError, match="non-empty list"):
        ToolRequest.of([])


@pytest.mark.parametrize("fmt, text, want", [
    (HERMES, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
     ("Let me check.", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # the close tag cut by EOS
     ("", [("get_weather", {"city": "Paris"})])),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
     ("", [("get_weather", {"city": "Paris"})])),
    (MISTRAL, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{}',
     ("", [("get_weather", {"city": "Paris"}), ("get_weather", {})])),
    (MISTRAL_JSON, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]',
     ("", [("get_weather", {"city": "Paris"})])),
    (GRANITE, '<|tool_call|>[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]',  # arguments as text
     ("", [("get_weather", {"city": "Paris"})])),
    (APRIEL, '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>',
     ("", [("get_weather", {"city": "Paris"})])),
    (GENERIC, ' {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]} ',
     ("", [("get_weather", {"city": "Paris"})])),
])
def test_each_layout_parses_what_models_write(fmt, text, want):
    assert calls_of(fmt, text) == want


@pytest.mark.parametrize("fmt, text", [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": '),  # cut by max_tokens
    (HERMES, "I would use <tool_call> tags."),
    (LLAMA3, '{"name": "Sofia", "age": 29}'),  # JSON, but not a call
    (LLAMA3, '{"name": "get_weather", "parameters": {}} and more'),
    (GENERIC, '{"tool_calls": [], "note": 1}'),
    (GENERIC, '{"name": "Sofia"}'),
    (MISTRAL_JSON, "[TOOL_CALLS] not json"),
])
def test_what_is_not_a_whole_call_stays_content(fmt, text):
    assert calls_of(fmt, text) == (text.strip(), [])


def test_mistral_ids_are_nine_letters_and_digits():
    _content, calls = MISTRAL.parse('[TOOL_CALLS]f[ARGS]{}')
    assert len(calls[0].id) == 9 and calls[0].id.isalnum()
    _content, calls = HERMES.parse('<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert calls[0].id.startswith("call_")


def _completion(text: str, finish: str = "stop") -> Completion:
    return Completion(text, [], finish, 3, 5, 0, {}, Timings(1, 1, 1, 1))


def _stream(fmt, pieces, finish="stop"):
    def gen():
        for p in pieces:
            yield p
        return _completion("".join(pieces), finish)

    stream = TextStream(with_tool_calls(gen(), fmt))
    return list(stream), stream.result


def test_a_stream_yields_the_content_and_holds_the_calls_back():
    pieces = ["Sure", ", checking.", "\n<tool", "_call>\n{", '"name": "get_weather", ', '"arguments": {"city": "Paris"}}',
              "\n</tool_call>"]
    out, result = _stream(HERMES, pieces)
    assert "".join(out) == "Sure, checking.\n"
    assert result.finish_reason == "tool_calls" and result.content == "Sure, checking."
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    out, result = _stream(HERMES, ["<tool", "ing> is a word"])  # a held prefix that was not a call
    assert "".join(out) == "<tooling> is a word" and result.tool_calls == () and result.finish_reason == "stop"
    out, result = _stream(GENERIC, [" {", '"name": "Sofia"}'])  # JSON content, held, then given back
    assert "".join(out) == ' {"name": "Sofia"}' and result.tool_calls == ()
    out, result = _stream(GENERIC, ["Hello", " {there}"])
    assert out == ["Hello", " {there}"]
    out, result = _stream(HERMES, ['<tool_call>{"name": "f", "arguments": {}}</tool_call>'], finish="cancelled")
    assert result.tool_calls == () and result.finish_reason == "cancelled"


def test_calls_to_tools_not_offered_or_several_without_parallel_stay_content():
    one = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'

    def run(text, **kw):
        def gen():
            yield text
            return _completion(text)
        return TextStream(with_tool_calls(gen(), HERMES, **kw)).consume()

    assert run(one, names=frozenset({"f"})).tool_calls
    assert run(one, names=frozenset({"g"})).tool_calls == ()
    assert run(one + one, names=frozenset({"f"}), parallel=False).tool_calls == ()
    assert HERMES.parse('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>')[1] == []


def test_messages_in_openai_forms():
    msgs = check_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ])
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"] == "a\nb"
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}, "id": "c1"}]}
    assert msgs[3] == {"role": "tool", "content": "2", "tool_call_id": "c1"}


def test_bad_messages_are_all_reported():
    with pytest.raises(InvalidRequestError) as e:
        check_messages([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
            {"role": "user", "content": "x", "tool_calls": []},
            {"role": "robot", "content": "x"},
        ])
    text = str(e.value)
    for needle in ("image_url parts are not supported", "needs the tool_call_id", "arguments is not valid JSON",
                   "unknown fields ['tool_calls'] for the role 'user'", "'robot' is not one of"):
        assert needle in text


def test_gbnf_literals_escape_what_gbnf_needs():
    assert gbnf_literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
