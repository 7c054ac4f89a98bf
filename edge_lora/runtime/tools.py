"""Tool calling, as OpenAI's chat API has it: the tools a call offers (:class:`Tool`), what the
model may or must do with them (:class:`ToolRequest`: ``tool_choice`` and ``parallel_tool_calls``)
and the calls it made (:class:`ToolCall`).

How a family writes a call, and the grammar that forces one, is :mod:`.tool_formats`' job.
``tool_choice`` follows OpenAI: ``"auto"`` (the model decides), ``"none"`` (no call; the tools are
not shown to the model), ``"required"`` (at least one call) or one named function; the last two
are forced by grammar, so the call is always well formed and its arguments match the tool's
``parameters`` schema.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validate import Problems
from ..errors import InvalidRequestError
from .grammar import schema_problems

#: OpenAI's rule for a function's name
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHOICES = ("auto", "none", "required")
#: a function without ``parameters`` takes none (OpenAI's reading)
NO_PARAMETERS: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class Tool:
    """One function the model may call: ``parameters`` is the JSON schema of its arguments object."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS))

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's ``{"type": "function", "function": {...}}``: what chat templates are given,
        as transformers' ``apply_chat_template(tools=...)`` gives them."""
        # an empty description where none was given: Hermes' templates read it unconditionally
        fn: dict[str, Any] = {"name": self.name, "description": self.description or ""}
        fn["parameters"] = dict(self.parameters)
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: ``arguments`` is the JSON text of an object (OpenAI's wire form)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolRequest:
    """The tools of one call and OpenAI's ``tool_choice`` (``"auto"``, ``"none"``, ``"required"``
    or a tool's name) and ``parallel_tool_calls``. Build it with :meth:`of`."""

    tools: tuple[Tool, ...]
    choice: str = "auto"
    parallel: bool = True

    @classmethod
    def of(cls, tools: Sequence[Tool | Mapping[str, Any]], tool_choice: str | Mapping[str, Any] | None = None,
           parallel_tool_calls: bool | None = None) -> ToolRequest:
        """From OpenAI's request fields (``None``: the default). Raises :class:`InvalidRequestError`
        with every problem at once: a malformed tool, a duplicate name, a ``parameters`` schema the
        grammar cannot enforce (named by path), a ``tool_choice`` naming no tool."""
        problems = Problems()
        parsed = tuple(t for t in (_tool(i, t, problems) for i, t in enumerate(_as_list(tools, problems))) if t)
        names = [t.name for t in parsed]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.add(f"tools: the name {dup!r} is given twice", param="tools")
        choice = _choice(tool_choice, set(names), problems)
        if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
            problems.add(f"parallel_tool_calls must be true or false, got {parallel_tool_calls!r}",
                         param="parallel_tool_calls")
        problems.raise_if_any(InvalidRequestError, "invalid tools")
        return cls(parsed, choice, True if parallel_tool_calls is None else parallel_tool_calls)

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools shown to the model: none with ``tool_choice="none"``."""
        return () if self.choice == "none" else self.tools

    @property
    def forced(self) -> tuple[Tool, ...]:
        """The tools a call is forced among (``required``: any; named: that one), else ``()``."""
        if self.choice in ("auto", "none"):
            return ()
        return self.tools if self.choice == "required" else tuple(t for t in self.tools if t.name == self.choice)


def _as_list(tools: object, problems: Problems) -> Sequence[object]:
    if isinstance(tools, Sequence) and not isinstance(tools, (str, bytes)) and tools:
        return tools
    problems.add("tools must be a non-empty list of {'type': 'function', 'function': {...}} objects", param="tools")
    return ()


def _tool(i: int, t: object, problems: Problems) -> Tool | None:
    where = f"tools[{i}]"
    if isinstance(t, Tool):
        fn: Mapping[str, Any] = {"name": t.name, "description": t.description, "parameters": t.parameters}
    elif isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("function"), Mapping):
        fn = t["function"]
        extra = set(t) - {"type", "function"}
        if extra:
            problems.add(f"{where}: unknown fields {sorted(extra)}", param="tools")
    else:
        problems.add(f"{where}: must be {{'type': 'function', 'function': {{'name', 'description', 'parameters'}}}}"
                     " (only function tools exist here)", param="tools")
        return None
    bad = set(fn) - {"name", "description", "parameters", "strict"}
    if bad:
        problems.add(f"{where}.function: unknown fields {sorted(bad)}", param="tools")
    name, desc, params = fn.get("name"), fn.get("description"), fn.get("parameters")
    ok = True
    if not isinstance(name, str) or not NAME.match(name):
        problems.add(f"{where}.function.name: {name!r} is not a function name (letters, digits, _ and -, "
                     "at most 64)", param="tools")
        ok = False
    if desc is not None and not isinstance(desc, str):
        problems.add(f"{where}.function.description: must be a string", param="tools")
        ok = False
    if params is None:
        params = dict(NO_PARAMETERS)
    elif not isinstance(params, Mapping) or params.get("type", "object") != "object":
        problems.add(f"{where}.function.parameters: must be the JSON schema of an object", param="tools")
        ok = False
    else:
        for p in schema_problems(params):
            problems.add(f"{where}.function.parameters: {p}", param="tools")
            ok = False
    return Tool(name, desc, dict(params)) if ok else None


def _choice(choice: object, names: set[str], problems: Problems) -> str:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice in CHOICES:
            return choice
        problems.add(f"tool_choice must be one of {', '.join(CHOICES)} or {{'type': 'function', 'function': "
                     f"{{'name': ...}}}}, got {choice!r}", param="tool_choice")
        return "auto"
    fn = choice.get("function") if isinstance(choice, Mapping) and choice.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, Mapping) else None
    if not isinstance(name, str):
        problems.add(f"tool_choice: {choice!r} is not {{'type': 'function', 'function': {{'name': ...}}}}",
                     param="tool_choice")
        return "auto"
    if names and name not in names:
        problems.add(f"tool_choice names {name!r}, which is not among the tools ({', '.join(sorted(names))})",
                     param="tool_choice")
    return name


def arguments_object(arguments: object, where: str) -> dict[str, Any]:
    """A history call's ``arguments`` (OpenAI's JSON text, or already an object) as the object
    chat templates expect (transformers documents them as dicts; vLLM and llama.cpp convert the
    same way). Raises :class:`InvalidRequestError` when it is not a JSON object."""
    value = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{where}: arguments is not valid JSON ({exc.msg})", param="messages") from exc
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: arguments must be a JSON object", param="messages")
    return value
