"""How each model family writes a tool call: one table (:data:`FORMATS`), each entry found by the
markers its chat template renders, able to parse a generated answer into content and
:class:`~.tools.ToolCall` s and to give the GBNF grammar that forces a call
(``tool_choice="required"`` or a named function).

The layouts are those the families' own templates render for an assistant's ``tool_calls``
(llama.cpp's ``models/templates/*.jinja``, the reference the tests render):

==============  ===========================================================================  =====================
format          one call, as generated                                                       templates
==============  ===========================================================================  =====================
``hermes``      ``<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>`` (repeated)      Qwen2.5, Qwen3, Hermes 2/3
``llama3``      ``{"name": N, "parameters": {...}}`` (the whole answer, one call)              Llama 3.1, 3.2, 3.3
``mistral``     ``[TOOL_CALLS]N[CALL_ID]id[ARGS]{...}`` (``[CALL_ID]`` where the template has it)  Mistral Small 3.2, Devstral, Ministral 3
``mistral-json`` ``[TOOL_CALLS][{"name": N, "arguments": {...}, "id": id}, ...]``            Mistral Nemo, 7B v0.3
``granite``     ``<|tool_call|>[{"name": N, "arguments": {...}}, ...]``                      Granite 3.x
``phi4``        ``<|tool_call|>{"name": N, "arguments": {...}}<|/tool_call|>`` (repeated)       Phi-4-mini
``generic``     ``{"tool_calls": [{"name": N, "arguments": {...}}, ...]}`` (the whole answer)   templates that do not render tools
==============  ===========================================================================  =====================

A template that renders no tools (Gemma 3, most base models' fallbacks) gets ``generic``: the
tools and the answer's form are put in the system turn (:func:`generic_instructions`), as
llama.cpp's generic handler does. A template that renders tools in a layout not in this table
is refused when tools are given (:class:`InvalidRequestError`), never guessed.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .reasoning import Thought
from .tools import Tool, ToolCall, ToolRequest

if TYPE_CHECKING:
    from .request import Completion

def _no_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


#: strict JSON: NaN and Infinity are refused (clients cannot parse them)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (llama.cpp's ``grammars/README.md``)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") \
        .replace("\t", "\\t") + '"'


def _head(name: str, args_key: str) -> str:
    """The GBNF literal opening a call object: ``{"name": "NAME", "ARGS_KEY": ``."""
    return gbnf_literal("{" + f'"name": {json.dumps(name)}, {json.dumps(args_key)}: ')


def _json_at(text: str, pos: int) -> tuple[Any, int] | None:
    """The JSON value starting at ``text[pos:]`` (whitespace skipped) and where it ends, or None."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        return None


def _call_of(obj: object, args_key: str, new_id: Any, id_key: str | None = None) -> ToolCall | None:
    """A :class:`ToolCall` from ``{"name": ..., args_key: {...}}`` (arguments may be JSON text)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    keys = {args_key, "arguments"} & set(obj)
    if len(keys) != 1 or set(obj) - {"name", *keys, "id", "type"}:  # a JSON answer with a "name" is no call
        return None
    args = obj[keys.pop()]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    given = obj.get(id_key) if id_key else None
    return ToolCall(obj["name"], _dumps(args), given if isinstance(given, str) else new_id())


def _dumps(args: dict) -> str:
    """The arguments as JSON text; escaped to ASCII when they hold a lone surrogate (not UTF-8)."""
    text = json.dumps(args, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(args)
    return text


def _openai_id() -> str:
    return ToolCall("x", "{}").id


def _mistral_id() -> str:
    """Mistral's templates refuse any id but 9 letters and digits."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=9))


@dataclass(frozen=True)
class ToolFormat:
    """One family's layout (module docstring). ``prefix`` opens the calls (a tag, or nothing for
    a whole-answer JSON), ``args_key`` names the arguments, ``markers`` are the template's tokens
    that identify it, ``preserve`` every marker the answer must keep as text where the vocabulary
    has it as a special token (llama.cpp's preserved tokens: a special token is otherwise left out
    of the text, and the call would not parse)."""

    name: str
    markers: tuple[str, ...]
    prefix: str = ""
    close: str = ""
    args_key: str = "arguments"
    preserve: tuple[str, ...] = ()
    parallel: bool = True
    renders_tools: bool = True

    def new_id(self) -> str:
        return _openai_id()

    # -- parsing ---------------------------------------------------------------------
    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a generated answer; an answer whose calls do not parse is all
        content, no calls (as vLLM's parsers do)."""
        raise NotImplementedError

    def hold_from(self, text: str) -> int:
        """Where the calls may begin in an answer generated so far (``len(text)``: nowhere yet):
        a stream yields the content before it and holds the rest until the answer ends."""
        start = text.find(self.prefix)
        if start >= 0:
            return start
        for k in range(min(len(self.prefix) - 1, len(text)), 0, -1):  # the prefix may be starting
            if self.prefix.startswith(text[-k:]):
                return len(text) - k
        return len(text)

    # -- forcing ---------------------------------------------------------------------
    def call_rule(self, tool: Tool, args_rule: str) -> str:
        """The GBNF of one call to ``tool``, its arguments being the rule ``args_rule``."""
        raise NotImplementedError

    def root_rule(self, calls: str, parallel: bool) -> str:
        """The GBNF of the whole answer from ``calls`` (one call, an alternative of each tool's)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Tagged(ToolFormat):
    """Each call wrapped in tags, the JSON object inside (Hermes, Qwen: on lines of their own,
    ``sep="\n"``; Phi-4: ``sep=""``)."""

    sep: str = "\n"

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        calls: list[ToolCall] = []
        content: list[str] = []
        pos = 0
        while (start := text.find(self.prefix, pos)) >= 0:
            got = _json_at(text, start + len(self.prefix))
            call = _call_of(got[0], self.args_key, self.new_id) if got else None
            if call is None:
                return text.strip(), []
            content.append(text[pos:start])
            calls.append(call)
            pos = got[1]  # type: ignore[index]
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if text.startswith(self.close, pos):
                pos += len(self.close)
        content.append(text[pos:])
        return "".join(content).strip(), calls

    def call_rule(self, tool: Tool, args_rule: str) -> str:
        return f"{gbnf_literal(self.prefix + self.sep)} {_head(tool.name, self.args_key)} {args_rule} " \
            + gbnf_literal("}" + self.sep + self.close)

    def root_rule(self, calls: str, parallel: bool) -> str:
        sep = f"{gbnf_literal(self.sep)} " if self.sep else ""
        return f"({calls})" + (f" ({sep}({calls}))*" if parallel else "")


@dataclass(frozen=True)
class JsonList(ToolFormat):
    """A prefix, then a JSON list of call objects (Mistral Nemo, Granite); ``id_key`` names the
    id the model writes into each call, where it does."""

    id_key: str | None = None

    def new_id(self) -> str:
        return _mistral_id() if self.id_key else _openai_id()

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(self.prefix)
        got = _json_at(text, start + len(self.prefix)) if start >= 0 else None
        if got is None or not isinstance(got[0], list) or not got[0]:
            return text.strip(), []
        calls = [_call_of(o, self.args_key, self.new_id, self.id_key) for o in got[0]]
        if not all(calls):
            return text.strip(), []
        rest = text[got[1]:].lstrip()
        return (text[:start] + rest.removeprefix(self.close)).strip(), calls  # type: ignore[return-value]

    def call_rule(self, tool: Tool, args_rule: str) -> str:
        rule = f"{_head(tool.name, self.args_key)} {args_rule}"
        if self.id_key:
            rule += " " + gbnf_literal(', "' + self.id_key + '": "') + ' [a-zA-Z0-9]{9} "\\""'
        return rule + ' "}"'

    def root_rule(self, calls: str, parallel: bool) -> str:
        more = f' (", " ({calls}))*' if parallel else ""
        return f'{gbnf_literal(self.prefix + "[")} ({calls}){more} {gbnf_literal("]" + self.close)}'


@dataclass(frozen=True)
class WholeJson(ToolFormat):
    """The whole answer is JSON: one call object (Llama 3), or ``{"tool_calls": [...]}``
    (``wrapper``, the generic form); any other answer is content."""

    wrapper: str | None = None

    def hold_from(self, text: str) -> int:
        body = text.lstrip()
        for tag in self.preserve:
            if tag.startswith(body) or body.startswith(tag):
                return 0
        return 0 if not body or body.startswith("{") else len(text)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        body = text.strip()
        for tag in self.preserve:
            body = body.removeprefix(tag).lstrip()
        got = _json_at(body, 0)
        if got is None or body[got[1]:].strip():
            return text.strip(), []
        value = got[0]
        if self.wrapper is not None:
            items = value.get(self.wrapper) if isinstance(value, dict) else None
            if not isinstance(items, list) or not items or set(value) != {self.wrapper}:
                return text.strip(), []
        else:
            items = [value]
        calls = [_call_of(o, self.args_key, self.new_id) for o in items]
        return ("", calls) if all(calls) else (text.strip(), [])  # type: ignore[return-value]

    def call_rule(self, tool: Tool, args_rule: str) -> str:
        return f'{_head(tool.name, self.args_key)} {args_rule} "}}"'

    def root_rule(self, calls: str, parallel: bool) -> str:
        if self.wrapper is None:
            return f"({calls})"
        more = f' (", " ({calls}))*' if parallel else ""
        return f'{gbnf_literal("{" + json.dumps(self.wrapper) + ": [")} ({calls}){more} "]}}"'


@dataclass(frozen=True)
class MistralArgs(ToolFormat):
    """``[TOOL_CALLS]name[ARGS]{...}`` per call, with ``[CALL_ID]id`` before ``[ARGS]`` where
    the template renders it (Mistral's v11+ tokenizers)."""

    call_id: bool = False

    def new_id(self) -> str:
        return _mistral_id()

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        start = text.find(self.prefix)
        if start < 0:
            return text.strip(), []
        calls: list[ToolCall] = []
        pos = start
        head = re.compile(re.escape(self.prefix) + r"\s*([A-Za-z0-9_-]+)(?:\[CALL_ID\]([A-Za-z0-9]+))?\[ARGS\]")
        while (m := head.match(text, pos)) is not None:
            got = _json_at(text, m.end())
            if got is None or not isinstance(got[0], dict):
                return text.strip(), []
            calls.append(ToolCall(m.group(1), _dumps(got[0]), m.group(2) or self.new_id()))
            pos = got[1]
            while pos < len(text) and text[pos].isspace():
                pos += 1
        if not calls:
            return text.strip(), []
        return (text[:start] + text[pos:]).strip(), calls

    def call_rule(self, tool: Tool, args_rule: str) -> str:
        call_id = ' "[CALL_ID]" [a-zA-Z0-9]{9}' if self.call_id else ""
        return f'{gbnf_literal(self.prefix + tool.name)}{call_id} "[ARGS]" {args_rule}'

    def root_rule(self, calls: str, parallel: bool) -> str:
        return f"({calls})" + (f" ({calls})*" if parallel else "")


HERMES = Tagged("hermes", ("<tool_call>",), prefix="<tool_call>", close="</tool_call>",
                preserve=("<tool_call>", "</tool_call>"))
LLAMA3 = WholeJson("llama3", ('"parameters": dictionary of argument name and its value',), args_key="parameters",
                   preserve=("<|python_tag|>",), parallel=False)
MISTRAL = MistralArgs("mistral", ("[TOOL_CALLS]", "[ARGS]"), prefix="[TOOL_CALLS]", preserve=("[TOOL_CALLS]", "[ARGS]"))
MISTRAL_CALL_ID = MistralArgs("mistral", ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"), prefix="[TOOL_CALLS]",
                              preserve=("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"), call_id=True)
MISTRAL_JSON = JsonList("mistral-json", ("[TOOL_CALLS]",), prefix="[TOOL_CALLS]", preserve=("[TOOL_CALLS]",),
                        id_key="id")
PHI4 = Tagged("phi4", ("<|tool_call|>", "<|/tool_call|>"), prefix="<|tool_call|>", close="<|/tool_call|>",
              preserve=("<|tool_call|>", "<|/tool_call|>"), sep="")
GRANITE = JsonList("granite", ("<|tool_call|>",), prefix="<|tool_call|>", preserve=("<|tool_call|>",))
APRIEL = JsonList("apriel", ("<tool_calls>[",), prefix="<tool_calls>", close="</tool_calls>",
                  preserve=("<tool_calls>", "</tool_calls>"))
NEMOTRON = JsonList("nemotron", ("<TOOLCALL>",), prefix="<TOOLCALL>", close="</TOOLCALL>",
                    preserve=("<TOOLCALL>", "</TOOLCALL>"))
GENERIC = WholeJson("generic", (), wrapper="tool_calls", renders_tools=False)

#: the table, most specific first: the first whose markers are all in the template wins
FORMATS: tuple[ToolFormat, ...] = (PHI4, GRANITE, APRIEL, NEMOTRON, HERMES, MISTRAL_CALL_ID, MISTRAL, MISTRAL_JSON, LLAMA3)


def with_tool_calls(gen: Iterator[str], fmt: ToolFormat, names: frozenset[str] | None = None,
                    parallel: bool = True) -> Generator[str, None, Completion]:
    """``gen``'s pieces with the tool calls held back, its :class:`Completion` (the generator's
    return value) with ``tool_calls``, ``content`` and ``finish_reason="tool_calls"`` when the
    answer holds calls in ``fmt``; an answer whose calls do not parse, call a tool not in
    ``names``, or are several without ``parallel`` stays content."""
    text, sent = "", 0
    try:
        while True:
            piece = next(gen)
            if isinstance(piece, Thought):  # a thought is no call: passed through
                yield piece
                continue
            text += piece
            cut = fmt.hold_from(text)
            if cut > sent:
                yield text[sent:cut]
                sent = cut
    except StopIteration as stop:
        result: Completion = stop.value
    answer = result.content if result.content is not None else result.text  # after a thought, if any
    content, calls = fmt.parse(answer) if result.finish_reason != "cancelled" else (answer, [])
    if (names is not None and any(c.name not in names for c in calls)) or (len(calls) > 1 and not parallel):
        calls = []
    if not calls:
        if len(text) > sent:
            yield text[sent:]
        return result
    shown = text[:sent].strip()
    rest = content[len(shown):] if content.startswith(shown) else ""
    if rest.strip():
        yield rest
    return replace(result, tool_calls=tuple(calls), content=content, finish_reason="tool_calls")


def detect(template: str) -> ToolFormat | None:
    """The format a template that renders tools writes its calls in, or None (not in the table)."""
    for fmt in FORMATS:
        if all(m in template for m in fmt.markers):
            return fmt
    return None


def generic_instructions(tools: Sequence[Tool], request: ToolRequest) -> str:
    """The system text that shows ``tools`` to a model whose template does not (the generic form)."""
    listed = json.dumps([{"name": t.name, **({"description": t.description} if t.description else {}),
                          "parameters": t.parameters} for t in tools], ensure_ascii=False)
    many = "one or more calls" if request.parallel else "one call"
    forced = request.forced
    when = "You must call a tool now" if forced else "To call tools"
    return (f"You can call these tools (each with the JSON schema of its arguments):\n{listed}\n"
            f"{when}: answer with only this JSON object, holding {many}: "
            '{"tool_calls": [{"name": "<tool name>", "arguments": {<the arguments>}}]}.'
            + ("" if forced else " Otherwise answer as usual."))


def force_grammar(fmt: ToolFormat, request: ToolRequest) -> tuple[str, str]:
    """(GBNF, root) that makes the answer a call to one of ``request.forced`` (every argument
    object matching its tool's ``parameters``): one call to a named tool; with ``"required"``,
    several where ``parallel_tool_calls`` and the format allow. The argument schemas are converted by the same converter as structured outputs."""
    from .grammar import JSON_CHAR_RULE
    from ..engine.native import json_schema_converter  # loads the bindings: at first use only

    from ..errors import InvalidRequestError

    converter = json_schema_converter({"char": JSON_CHAR_RULE})
    alts = []
    for tool in request.forced:
        schema = _own_defs(json.loads(json.dumps(tool.parameters)), tool.name)
        try:
            resolved = converter.resolve_refs(schema, f"tool-{tool.name}")
            args_rule = converter.visit(resolved, f"{tool.name}-arguments")
        except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidRequestError(f"tools: the parameters of {tool.name!r} cannot be turned into a grammar: {exc}",
                                      param="tools") from None
        alts.append(fmt.call_rule(tool, args_rule))
    several = request.choice == "required" and request.parallel and fmt.parallel  # a named choice: one call
    root = fmt.root_rule(" | ".join(f"({a})" for a in alts), several)
    return converter.format_grammar() + f"\ntool-calls ::= {root}", "tool-calls"


def _own_defs(schema: Any, tool: str) -> Any:
    """``schema`` with its ``$defs``/``definitions`` renamed ``TOOL-Name`` (and its local refs with
    them): the converter names a referenced rule by its last path segment, so two tools' ``Item``
    would otherwise share the first one's rule."""
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k in ("$defs", "definitions") and isinstance(v, dict):
                    out[k] = {f"{tool}-{name}": walk(sub) for name, sub in v.items()}
                elif k == "$ref" and isinstance(v, str) and v.startswith(("#/$defs/", "#/definitions/")):
                    parts = v.split("/")
                    parts[2] = f"{tool}-{parts[2]}"
                    out[k] = "/".join(parts)
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(x) for x in node]
        return node
    return walk(schema)
