"""Chat prompts from the model's own template (the GGUF's ``tokenizer.chat_template``).

Templates are Jinja, rendered in a sandbox as Hugging Face does. A base without a
template (base models such as gemma-3-270m ship none) gets a fallback chosen by
the special tokens its vocabulary has, as llama.cpp detects templates: Gemma turns
(``<start_of_turn>``), Llama 3 headers (``<|start_header_id|>``), ChatML
(``<|im_start|>``), else plain ``User:``/``Assistant:`` lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import json

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError
from .tool_formats import FORMATS, GENERIC, ToolFormat, detect, generic_instructions
from .tools import ToolRequest

ROLES = ("system", "user", "assistant", "tool")

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma has no system role: a system message is put before the first user turn, as Gemma's own template does
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
#: (special token that identifies the family, fallback template, name), first match wins
FALLBACKS = (
    ("<start_of_turn>", GEMMA_TEMPLATE, "gemma"),
    ("<|start_header_id|>", LLAMA3_TEMPLATE, "llama3"),
    ("<|im_start|>", CHATML_TEMPLATE, "chatml"),
)


def fallback_template(is_special_token: Callable[[str], bool]) -> tuple[str, str]:
    """(template, name) for a base without its own chat template."""
    for token, template, name in FALLBACKS:
        if is_special_token(token):
            return template, name
    return PLAIN_TEMPLATE, "plain"


def check_messages(messages: object) -> list[dict[str, Any]]:
    """Validate chat messages in OpenAI's form; every problem is reported at once.

    ``content`` is a string, a list of text parts (``[{"type": "text", "text": ...}]``, joined
    with newlines as llama.cpp does) or, for an assistant turn with ``tool_calls``, null. The
    ``developer`` role is the system role (OpenAI's newer name). An assistant's ``tool_calls``
    get their ``arguments`` as objects (what templates expect; :func:`.tools.arguments_object`);
    a ``tool`` turn carries ``tool_call_id`` and may carry ``name``. Returns the messages in the
    form templates are given."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} objects")
    problems: list[str] = []
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            problems.append(f"messages[{i}]: not an object")
            continue
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            problems.append(f"messages[{i}].role: {role!r} is not one of {', '.join((*ROLES, 'developer'))}")
        extra = set(m) - FIELDS.get(str(role), {"role", "content", "name"})
        if extra:
            problems.append(f"messages[{i}]: unknown fields {sorted(extra)} for the role {role!r}")
        msg: dict[str, Any] = {"role": str(role), "content": _content(i, m.get("content"), m, problems)}
        if m.get("tool_calls"):
            msg["tool_calls"] = _history_calls(i, m["tool_calls"], problems)
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                if isinstance(m[key], str):
                    msg[key] = m[key]
                else:
                    problems.append(f"messages[{i}].{key}: must be a string")
        if role == "tool" and "tool_call_id" not in msg:
            problems.append(f"messages[{i}]: a tool message needs the tool_call_id of the call it answers")
        out.append(msg)
    if problems:
        raise InvalidRequestError("invalid chat messages", problems, param="messages")
    return out


#: the fields each role may carry (OpenAI's chat messages)
FIELDS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal"},
    "tool": {"role", "content", "tool_call_id", "name"},
}


def _content(i: int, content: object, m: Mapping[str, Any], problems: list[str]) -> str:
    if isinstance(content, str):
        return content
    if content is None and m.get("role") == "assistant" and (m.get("tool_calls") or "refusal" in m):
        return ""
    if isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_image", "image", "input_audio", "file"):
                problems.append(f"messages[{i}].content[{j}]: {kind} parts are not supported: this runtime "
                                "takes text only (no vision or audio input)")
            else:
                problems.append(f"messages[{i}].content[{j}]: must be {{'type': 'text', 'text': ...}}")
        return "\n".join(texts)
    problems.append(f"messages[{i}].content: must be a string or a list of text parts")
    return ""


def _history_calls(i: int, calls: object, problems: list[str]) -> list[dict[str, Any]]:
    from .tools import arguments_object

    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes)):
        problems.append(f"messages[{i}].tool_calls: must be a list")
        return []
    out = []
    for j, c in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            problems.append(f"{where}: must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}")
            continue
        try:
            args = arguments_object(fn.get("arguments", {}), where)
        except InvalidRequestError as exc:
            problems.append(exc.message)
            continue
        call: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(c.get("id"), str):
            call["id"] = c["id"]
        out.append(call)
    return out


def _raise(message: str) -> None:
    raise InvalidRequestError(f"the chat template refused these messages: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson`` for chat templates (``chat_template_utils``): plain ``json.dumps``,
    where Jinja's own filter escapes ``<``, ``>``, ``&`` and ``'`` for HTML."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant tokens with it (its
    ``AssistantTracker``); rendered here as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


#: a tool only used to see whether a template shows the tools it is given
_PROBE = {"type": "function", "function": {"name": "edge_lora_probe_tool", "description": "probe",
                                           "parameters": {"type": "object", "properties": {}}}}


class ChatTemplate:
    """A compiled chat template, rendered as transformers' ``apply_chat_template`` renders it
    (the same Jinja environment, filters and globals; ``tools`` given in OpenAI's form)."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str,
                 is_special_token: Callable[[str], bool] = lambda _t: False) -> None:
        self.name = "model"
        if not source:
            source, self.name = fallback_template(is_special_token)
        self.source = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols", _Generation])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"the model's chat template does not compile: {exc}") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._tool_format: ToolFormat | None = None
        self._system: bool | None = None

    @property
    def tool_format(self) -> ToolFormat:
        """How this template's model writes tool calls (:mod:`.tool_formats`): its own layout
        when the template shows tools, the generic one when it does not. Raises
        :class:`InvalidRequestError` for a template that shows tools in a layout not in the table."""
        if self._tool_format is None:
            try:
                shown = _PROBE["function"]["name"] in self._apply([{"role": "user", "content": "Hi"}], [_PROBE], True)
            except (InvalidRequestError, jinja2.TemplateError, TypeError, ValueError):
                shown = False
            fmt = detect(self.source) if shown else GENERIC
            if fmt is not None and fmt.renders_tools and not self._writes_calls_as(fmt):
                fmt = None
            if fmt is None:
                raise InvalidRequestError(
                    "this model's chat template shows tools, but writes tool calls in a layout edge-lora does not "
                    f"parse (known: {', '.join(f.name for f in FORMATS)}); call without tools, or give a chat "
                    "template in one of those layouts", param="tools")
            self._tool_format = fmt
        return self._tool_format

    def _writes_calls_as(self, fmt: ToolFormat) -> bool:
        """Whether this template renders an assistant's call the way ``fmt`` parses it back (a
        template with the same marker may write calls in another layout: XML arguments...). A
        template that shows no earlier calls at all is taken at its markers."""
        args = {"city": "Paris", "days": 2}
        name = _PROBE["function"]["name"]
        call = {"id": "abcDEF123", "type": "function", "function": {"name": name, "arguments": args}}
        user = {"role": "user", "content": "Hi"}
        try:
            head = self._apply([user], [_PROBE], True)
            full = self._apply([user, {"role": "assistant", "content": "", "tool_calls": [call]}], [_PROBE], False)
            plain = self._apply([user, {"role": "assistant", "content": "PROBE-ANSWER"}], [_PROBE], False)
            answer = full[len(head):] if full.startswith(head) else full[full.rindex("Hi") + 2:]
            end = plain[plain.rindex("PROBE-ANSWER") + len("PROBE-ANSWER"):].strip()  # the end-of-turn marks
        except (InvalidRequestError, jinja2.TemplateError, TypeError, ValueError):
            return False
        if name not in answer:
            return True
        answer = answer.strip().removesuffix(end) if end else answer
        _content, calls = fmt.parse(answer)
        return len(calls) == 1 and calls[0].name == name and json.loads(calls[0].arguments) == args

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: ToolRequest | None = None, template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text of ``messages`` (:func:`check_messages`), with ``tools`` shown to the
        model unless ``tool_choice`` is ``"none"``: given to the template, or for a template that
        shows none put in the system turn in the generic form (:mod:`.tool_formats`), the history's
        calls and results rewritten in that form. ``template_kwargs`` are extra template variables
        (``enable_thinking``...). Raises :class:`InvalidRequestError`."""
        msgs = check_messages(messages)
        offered = tools.offered if tools is not None else ()
        has_history = any(m.get("tool_calls") or m["role"] == "tool" for m in msgs)
        fmt = self.tool_format if offered or has_history else None
        if fmt is not None and not fmt.renders_tools:
            msgs = generic_messages(msgs, tools if offered else None, system=self.has_system_role)
        listed = [t.as_openai() for t in offered] if fmt is not None and fmt.renders_tools and offered else None
        return self._apply(msgs, listed, add_generation_prompt, template_kwargs)

    def _apply(self, msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None, add_generation_prompt: bool,
               template_kwargs: Mapping[str, Any] | None = None) -> str:
        problem = template_kwargs_problem(template_kwargs or {})
        if problem:
            raise InvalidRequestError(problem, param="template_kwargs")
        try:
            return self._template.render(
                **dict(template_kwargs or {}),
                messages=msgs,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except InvalidRequestError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise InvalidRequestError(f"the chat template failed on these messages: {exc}") from exc

    @property
    def has_system_role(self) -> bool:
        """Whether the template shows a system turn (Gemma 2's refuses one)."""
        if self._system is None:
            try:
                self._system = "SYSTEM-PROBE" in self._apply(
                    [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "Hi"}], None, True)
            except InvalidRequestError:
                self._system = False
        return self._system


#: what a call gives the template itself: template_kwargs may not replace them
RESERVED = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token", "raise_exception",
                      "strftime_now", "namespace", "range", "dict", "lipsum", "cycler", "joiner"})


def template_kwargs_problem(kwargs: object) -> str | None:
    """Why ``kwargs`` cannot be extra chat-template variables (a mapping of names to JSON values,
    none of the names the call itself gives: :data:`RESERVED`), or None."""
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) and k for k in kwargs):
        return f"template_kwargs must map names to values, got {type(kwargs).__name__}"
    taken = sorted(set(kwargs) & RESERVED)
    if taken:
        return f"template_kwargs may not set {taken}: the call gives those"
    try:
        json.dumps(dict(kwargs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"template_kwargs must be JSON values ({exc})"
    return None


def generic_messages(msgs: list[dict[str, Any]], tools: ToolRequest | None, system: bool = True) -> list[dict[str, Any]]:
    """``msgs`` for a template that shows no tools: the tools' description in the system turn
    (:func:`.tool_formats.generic_instructions`; the first user turn's start when the template
    has no system role), each assistant's calls as the generic JSON it would have written, each
    tool result as a user turn (``{"tool_response": ...}``), consecutive user turns joined (the
    templates that insist on alternating roles)."""
    out: list[dict[str, Any]] = []
    for m in msgs:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)})
        elif m["role"] == "tool":
            body = {"tool_call_id": m["tool_call_id"], **({"name": m["name"]} if "name" in m else {}),
                    "content": m["content"]}
            out.append({"role": "user", "content": json.dumps({"tool_response": body}, ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools is not None and tools.offered:
        text = generic_instructions(tools.offered, tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    if not system and out and out[0]["role"] == "system":
        first = out.pop(0)["content"]
        if out and out[0]["role"] == "user":
            out[0] = {"role": "user", "content": first + "\n\n" + out[0]["content"]}
        else:
            out.insert(0, {"role": "user", "content": first})
    joined: list[dict[str, Any]] = []
    for m in out:
        if joined and m["role"] == "user" and joined[-1]["role"] == "user":
            joined[-1] = {"role": "user", "content": joined[-1]["content"] + "\n\n" + m["content"]}
        else:
            joined.append(m)
    return joined
