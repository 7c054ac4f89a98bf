"""The one option schema, and the command line's arguments that map onto it."""

from __future__ import annotations

import argparse

import pytest

from edge_lora.cli.common import (
    add_sampling_flags,
    parse_adapter_arg,
    parse_adapter_spec,
    parse_use,
    sampling_options,
)
from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.request import OPTIONS, SamplingParams


def test_defaults_come_from_the_table():
    p = SamplingParams()
    for name, opt in OPTIONS.items():
        assert getattr(p, name) == opt.default
    assert SamplingParams.build(temperature=None, stop="x") == SamplingParams(stop=("x",))


def test_every_problem_at_once_with_the_first_param_named():
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams.build(temperature=-1, top_p=2.0, max_tokens=True, top_k=1.5, seed="s", stop=["ok", ""])
    e = err.value
    assert e.param == "max_tokens" and len(e.problems) == 6
    for name in ("temperature", "top_p", "max_tokens", "top_k", "seed", "stop"):
        assert any(p.startswith(name) for p in e.problems), name


def test_unknown_options_are_invalid_requests():
    with pytest.raises(InvalidRequestError, match="unknown generation options 'bogus', 'other'") as err:
        SamplingParams.build(bogus=1, other=2)
    assert err.value.param == "bogus"
    with pytest.raises(InvalidRequestError, match="stop must be a string"):
        SamplingParams.build(stop=5)


def test_cli_flags_map_onto_the_schema_and_keep_its_defaults():
    parser = argparse.ArgumentParser()
    add_sampling_flags(parser)
    assert sampling_options(parser.parse_args([])) == {}
    args = parser.parse_args(["--temp", "0", "--top-k", "5", "--stop", "a", "--stop", "b", "--min-p", "0.1"])
    assert sampling_options(args) == {"temperature": 0.0, "top_k": 5, "stop": ["a", "b"], "min_p": 0.1}
    assert SamplingParams.build(**sampling_options(args)).stop == ("a", "b")
    assert "(default 0.8)" in parser.format_help()


@pytest.mark.parametrize("text, want", [
    ("sql=sql.gguf", ("sql", "sql.gguf", 1.0)),
    ("sql=sql.gguf:0.5", ("sql", "sql.gguf", 0.5)),
    ("sql=C:/a/sql.gguf", ("sql", "C:/a/sql.gguf", 1.0)),  # a ':' in the path
    ("sql=C:/a/sql.gguf:-1", ("sql", "C:/a/sql.gguf", -1.0)),
])
def test_name_path_scale(text, want):
    assert parse_adapter_spec(text) == want


def test_bad_name_path_scale():
    for bad in ("sql", "=x.gguf", "sql="):
        with pytest.raises(InvalidRequestError):
            parse_adapter_spec(bad)


def test_adapter_arg_and_use():
    assert parse_adapter_arg("tone.gguf:-0.3") == ("tone.gguf", -0.3)
    assert parse_adapter_arg("dir:name/x.gguf") == ("dir:name/x.gguf", 1.0)
    with pytest.raises(InvalidRequestError, match="not a finite"):
        parse_adapter_arg("x.gguf:inf")
    with pytest.raises(InvalidRequestError, match="no adapter path"):
        parse_adapter_arg("")
    with pytest.raises(InvalidRequestError, match="not a finite"):
        parse_adapter_spec("sql=sql.gguf:nan")
    assert parse_use(["sql:0.5", "tone"]) == {"sql": 0.5, "tone": None}
    with pytest.raises(InvalidRequestError, match="SCALE"):
        parse_use(["sql:x"])
