"""simonw's llm (pinned in the dev extra), its CLI as a user runs it, against ``edge-lora serve``
on gemma-3-270m with the demo adapters registered in ``extra-openai-models.yaml``: a prompt,
``--schema`` (structured output), and ``-T`` tools sent with the prompt (llm has no tool_choice:
whether the model calls one is its own choice)."""

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
                   "supports_tools": True} for m in ("gemma", "json")]
        (home / "extra-openai-models.yaml").write_text(json.dumps(models))  # JSON is YAML
        yield {**os.environ, "LLM_USER_PATH": str(home), "OPENAI_API_KEY": "none"}


def llm(env: dict, *args: str) -> str:
    proc = subprocess.run([str(LLM), *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_prompt(env):
    out = llm(env, "-m", "edge-json", "-o", "temperature", "0", "-o", "max_tokens", "40", PROMPT)
    assert out.strip().startswith("{") and "Sofia" in out


def test_schema(env):
    out = llm(env, "-m", "edge-json", "--schema", "name, age int, city", "-o", "temperature", "0",
              "-o", "max_tokens", "60", PROMPT)
    got = json.loads(out)
    assert got == {"name": "Sofia", "age": 29, "city": "Lyon"}


def test_tools_are_sent(env):
    """The tool reaches the model: the tiny base, not trained for tools, echoes the tool list it was
    shown (measured) instead of calling; a model that calls gets its call parsed (test_tools.py)."""
    out = llm(env, "-m", "edge-gemma", "-T", "llm_version", "-o", "temperature", "0", "-o", "max_tokens", "30",
              "What version of llm is installed?")
    assert "llm_version" in out
