"""runtime.grammar's conversions through the bindings' JSON-schema converter (no model needed):
what pydantic writes becomes a grammar, the converter's own refusals are typed, strings exclude raw
control characters, and SamplingParams carry a schema or a grammar. The grammars running on a real
model: tests/test_structured.py."""

from __future__ import annotations

import pytest

from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.grammar import Grammar, schema_problems
from edge_lora.runtime.request import SamplingParams
from schemas import PYDANTIC



def test_a_pydantic_schema_is_enforced_whole():
    assert schema_problems(PYDANTIC) == []
    g = Grammar.from_json_schema(PYDANTIC)
    assert g.source == "json_schema" and g.root == "root"
    rules = dict(line.split(" ::= ", 1) for line in g.gbnf.splitlines())
    assert '"\\"name\\""' in rules["name-kv"] and "root" in rules
    assert "date" in g.gbnf and '"\\"a\\""' in g.gbnf  # the format and the enum are rules


@pytest.mark.parametrize("schema, needle", [
    ({"$ref": "https://example.com/s.json"}, "only local references"),
    ({"properties": {"a": {"$ref": "#/$defs/Missing"}}}, "Missing"),
    ({"type": "string", "pattern": "[a-z]+"}, "Pattern must start with"),
    ({"type": "tuple"}, "unknown type"),
    ("{not json", "not valid JSON"),
    ([1, 2], "must be an object"),
])
def test_schemas_the_converter_cannot_take_are_typed_refusals(schema, needle):
    with pytest.raises(InvalidRequestError) as e:
        Grammar.from_json_schema(schema)
    assert needle in str(e.value)


def test_json_object_is_any_object():
    g = Grammar.json_object()
    rules = dict(line.split(" ::= ", 1) for line in g.gbnf.splitlines())
    assert g.source == "json_object" and rules["root"] == "object"
    assert "\\x00-\\x1F" in rules["char"]  # no raw control characters in strings (RFC 8259)


def test_sampling_params_take_a_schema_or_a_grammar_not_both():
    p = SamplingParams.build(json_schema='{"type": "boolean"}')
    assert p.grammar is not None and "true" in p.grammar.gbnf
    assert SamplingParams.build(grammar='root ::= "yes" | "no"').grammar == Grammar('root ::= "yes" | "no"')
    with pytest.raises(InvalidRequestError, match="not both"):
        SamplingParams.build(json_schema={}, grammar="root ::= x")
    with pytest.raises(InvalidRequestError, match="non-empty"):
        SamplingParams.build(grammar="  ")
    with pytest.raises(InvalidRequestError, match="must be a Grammar"):
        SamplingParams(grammar="root ::= x")  # type: ignore[arg-type]
