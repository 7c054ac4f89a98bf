"""simonw's llm (pinned in the dev extra), its CLI as a user runs it, against ``edge-lora serve``
on gemma-3-270m with the demo adapters registered in ``extra-openai-models.yaml``: a prompt,
``--schema`` (structured output), and ``-T`` tools (llm has no tool_choice: whether the model
calls one is its own choice; the tools demo adapter, trained to, calls llm's own ``llm_version``,
a tool it never saw in training, llm runs it and sends the result back, and the adapter answers
with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from client_common import PROMPT
from serving import gemma_server

pytest.importorskip("llm")
LLM = Path(sys.executable).parent / "llm"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("llm")
    with gemma_server() as u:
        models = [{"model_id": f"edge-{m}", "model_name": m, "api_base": u + "/v1", "supports_schema": True,
                   "supports_tools": True} for m in ("gemma", "json", "tools")]
        (home / "extra-openai-models.yaml").write_text(json.dumps(models))  # JSON is YAML
        yield {**os.environ, "LLM_USER_PATH": str(home), "OPENAI_API_KEY": "none"}


def llm(env: dict, *args: str, stderr: bool = False) -> str:
    proc = subprocess.run([str(LLM), *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + (proc.stderr if stderr else "")


def test_a_prompt(env):
    out = llm(env, "-m", "edge-json", "-o", "temperature", "0", "-o", "max_tokens", "40", PROMPT)
    assert out.strip().startswith("{") and "Sofia" in out


def test_schema(env):
    out = llm(env, "-m", "edge-json", "--schema", "name, age int, city", "-o", "temperature", "0",
              "-o", "max_tokens", "60", PROMPT)
    got = json.loads(out)
    assert got == {"name": "Sofia", "age": 29, "city": "Lyon"}


def test_tools_are_sent_and_called(env):
    """The base alone, not trained for tools, echoes the tool list it was shown (measured), so the
    tool reaches the model; the tools adapter calls it, llm runs it (``--td`` prints the call and
    its result) and the adapter's answer gives the result."""
    out = llm(env, "-m", "edge-gemma", "-T", "llm_version", "-o", "temperature", "0", "-o", "max_tokens", "30",
              "What version of llm is installed?")
    assert "llm_version" in out
    from importlib.metadata import version

    out = llm(env, "-m", "edge-tools", "-T", "llm_version", "--td", "-o", "temperature", "0",
              "-o", "max_tokens", "60", "What version of llm is installed?", stderr=True)
    assert "llm_version(" in out, out  # --td: the call llm ran (on stderr)
    assert f"The result is {version('llm')}." in out, out


def test_a_function_given_on_the_command_line_is_called_with_its_argument(env):
    """``--functions`` (llm's tools from Python code): an unseen tool with an argument, which the
    tools adapter fills from the question; llm runs it and the answer gives its result."""
    code = 'def get_population(country: str) -> str:\n    "The population of a country"\n    return "34 million"\n'
    out = llm(env, "-m", "edge-tools", "--functions", code, "--td", "-o", "temperature", "0",
              "-o", "max_tokens", "60", "What is the population of Peru?", stderr=True)
    assert "get_population(" in out and "Peru" in out, out
    assert "The result is 34 million." in out, out
