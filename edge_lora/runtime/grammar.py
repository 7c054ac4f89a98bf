"""Structured outputs: a GBNF grammar that constrains sampling (llama.cpp's grammar sampler).

A JSON schema becomes a grammar through the converter the pinned bindings ship
(``llama_cpp.llama_grammar``, a port of llama.cpp's ``json_schema_to_grammar.py``). That converter
enforces only some of JSON Schema and passes over the rest without a word, so every keyword is
checked first: a schema whose output the grammar cannot guarantee is refused, naming each keyword
and where it is, all at once. Annotations (``title``, ``description``, ``default``...) are allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

#: keywords the converter turns into grammar rules (``SchemaConverter.visit``)
ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "oneOf", "anyOf", "allOf", "$ref", "$defs", "definitions", "pattern", "format",
    "minLength", "maxLength",
})
#: keywords that describe a value without constraining it: accepted, nothing to enforce
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "example", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "nullable", "discriminator",
})
#: string formats the converter has rules for
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})

#: any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)
JSON_OBJECT_SCHEMA: dict = {"type": "object"}

#: a character inside a JSON string, as llama.cpp's current converter has it
#: (``common/json-schema-to-grammar.cpp``, ``PRIMITIVE_RULES["char"]``): the bindings' older port
#: lets raw control characters (a newline) into strings, which JSON forbids (RFC 8259, section 7)
JSON_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


#: the deepest nesting of ( ) groups a grammar may have (a bound far above what schemas produce)
MAX_GROUP_DEPTH = 256


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar (llama.cpp's ``grammars/README.md``) and its start rule; ``source`` says
    where it came from, for messages (``"json_schema"``, ``"json_object"``, ``"grammar"``)."""

    gbnf: str
    root: str = "root"
    source: str = "grammar"

    def __post_init__(self) -> None:
        if not isinstance(self.gbnf, str) or not self.gbnf.strip():
            raise InvalidRequestError("a grammar must be non-empty GBNF text", param="grammar")
        depth = deepest = 0
        for ch in self.gbnf:  # llama.cpp's parser recurses per group: a deep nest would overflow its stack
            depth += (ch == "(") - (ch == ")")
            deepest = max(deepest, depth)
        if deepest > MAX_GROUP_DEPTH:
            raise InvalidRequestError(f"the grammar nests groups {deepest} deep; at most {MAX_GROUP_DEPTH}",
                                      param="grammar")

    @classmethod
    def from_json_schema(cls, schema: Mapping[str, Any] | str, *, param: str = "json_schema",
                         source: str = "json_schema") -> Grammar:
        """The grammar of ``schema`` (a dict, or its JSON text). Raises
        :class:`InvalidRequestError` naming every keyword the grammar cannot enforce, or the
        converter's own reason (a bad ``$ref``, a pattern without ``^...$``)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequestError(f"{param}: not valid JSON ({exc})", param=param) from None
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(f"{param}: a JSON schema must be an object, got {type(schema).__name__}",
                                      param=param)
        problems = schema_problems(schema)
        if problems:
            raise InvalidRequestError(
                f"{param}: the schema uses what constrained decoding cannot enforce; remove or rewrite it "
                "(the output would otherwise not be guaranteed to match)", problems, param=param)
        from ..engine.native import json_schema_converter  # loads the bindings: at first use only

        converter = json_schema_converter({"char": JSON_CHAR_RULE})
        try:
            resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
            converter.visit(resolved, "")
            gbnf = converter.format_grammar()
        except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise InvalidRequestError(f"{param}: the schema cannot be turned into a grammar: {exc}",
                                      param=param) from None
        return cls(gbnf, "root", source)

    @classmethod
    def json_object(cls) -> Grammar:
        return cls.from_json_schema(JSON_OBJECT_SCHEMA, source="json_object")


def schema_problems(schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Every keyword of ``schema`` (recursively) that the grammar would not enforce, as
    ``"$.properties.age: minimum ..."`` lines; empty when the whole schema is enforced."""
    out: list[str] = []
    _walk(schema, where, out)
    return out


def _walk(node: Any, where: str, out: list[str]) -> None:
    if isinstance(node, bool):  # true/false schemas: only as additionalProperties (below)
        out.append(f"{where}: a boolean schema is only supported as additionalProperties")
        return
    if not isinstance(node, Mapping):
        out.append(f"{where}: a schema must be an object, got {json.dumps(node)[:40]}")
        return
    for key, value in node.items():
        here = f"{where}.{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            out.append(f"{here}: {key!r} is not enforced by the grammar")
            continue
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in TYPES]
            if bad:
                out.append(f"{here}: unknown type {bad}")
        elif key == "format" and value not in FORMATS:
            out.append(f"{here}: format {value!r} is not enforced (supported: {', '.join(sorted(FORMATS))})")
        elif key in ("minLength", "maxLength") and node.get("type") != "string":
            out.append(f"{here}: {key} is enforced only beside \"type\": \"string\"")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, Mapping):
                out.append(f"{here}: must be an object")
                continue
            for name, sub in value.items():
                _walk(sub, f"{here}.{name}", out)
        elif key == "additionalProperties":
            if not isinstance(value, bool):
                _walk(value, here, out)
        elif key == "items":
            if isinstance(value, list):
                for i, sub in enumerate(value):
                    _walk(sub, f"{here}[{i}]", out)
            else:
                _walk(value, here, out)
        elif key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            if not isinstance(value, list) or not value:
                out.append(f"{here}: must be a non-empty list")
                continue
            for i, sub in enumerate(value):
                _walk(sub, f"{here}[{i}]", out)
            if key == "allOf" and not all(isinstance(s, Mapping) and ("properties" in s or "$ref" in s or "anyOf" in s)
                                          for s in value):
                out.append(f"{here}: allOf is enforced only as a merge of objects (each part with properties or a $ref)")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            out.append(f"{here}: only local references (#/...) are resolved, got {value!r}")
