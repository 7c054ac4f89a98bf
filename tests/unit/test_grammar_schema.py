"""runtime.grammar: a JSON schema becomes a grammar only when the grammar enforces all of it;
every keyword it cannot enforce is named, with where it is, at once (before the converter, which
needs the bindings, is loaded: tests/test_grammar_convert.py has the conversions)."""

from __future__ import annotations

import pytest

from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.grammar import Grammar, schema_problems
from schemas import PYDANTIC



def test_a_pydantic_schema_has_nothing_unenforced():
    assert schema_problems(PYDANTIC) == []


def test_every_unenforced_keyword_is_named_with_its_place():
    schema = {"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
        "x": {"not": {"type": "null"}},
        "n": {"type": "number", "multipleOf": 2},
        "s": {"minLength": 2},
    }, "patternProperties": {"^a": {}}}
    problems = schema_problems(schema)
    for needle in ("$.properties.age.minimum", "$.properties.age.maximum", "$.properties.email.format",
                   "'email' is not enforced", "$.properties.tags.uniqueItems", "$.properties.x.not",
                   "$.properties.n.multipleOf", "$.patternProperties", "$.properties.s.minLength"):
        assert any(needle in p for p in problems), (needle, problems)
    assert not any("tags.items.minLength" in p for p in problems)  # beside type string: enforced
    with pytest.raises(InvalidRequestError) as e:
        Grammar.from_json_schema(schema, param="response_format.json_schema.schema")
    assert e.value.param == "response_format.json_schema.schema"
    assert len(e.value.problems) == len(problems) and "cannot enforce" in str(e.value)
