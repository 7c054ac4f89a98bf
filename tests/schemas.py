"""JSON schemas the structured-output tests share."""

#: what pydantic 2 writes for a model with a nested model, an optional field and a list
PYDANTIC = {
    "$defs": {"City": {"properties": {"name": {"title": "Name", "type": "string"}}, "required": ["name"],
                       "title": "City", "type": "object"}},
    "properties": {
        "name": {"title": "Name", "type": "string", "description": "the person's name"},
        "age": {"title": "Age", "type": "integer"},
        "city": {"$ref": "#/$defs/City"},
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Nick"},
        "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array", "maxItems": 3},
        "born": {"type": "string", "format": "date"},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "age", "city", "tags", "born", "kind"],
    "title": "Person", "type": "object", "additionalProperties": False,
}
