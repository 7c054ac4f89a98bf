"""instructor (pinned in the dev extra) against ``edge-lora serve`` on gemma-3-270m with the demo
adapters: ``response_model`` in its default TOOLS mode (a forced tool call) and its JSON_SCHEMA
and JSON modes (``response_format``)."""

from __future__ import annotations

import openai
import pytest
from client_common import PROMPT, Person
from serving import gemma_server

instructor = pytest.importorskip("instructor")


@pytest.fixture(scope="module")
def url():
    with gemma_server() as u:
        yield u + "/v1"


#: TOOLS forces a call through the generic layout and JSON puts the whole schema in a system turn:
#: there the base alone fills the object, while the json adapter (trained on bare prompts) runs
#: on until max_tokens (measured); JSON_SCHEMA gives it its own form under the grammar
@pytest.mark.parametrize("mode, model", [("TOOLS", "gemma"), ("JSON_SCHEMA", "json"), ("JSON", "gemma")])
def test_response_model_in_each_mode(url, mode, model):
    client = instructor.from_openai(openai.OpenAI(base_url=url, api_key="none", max_retries=0),
                                    mode=getattr(instructor.Mode, mode))
    got = client.chat.completions.create(model=model, response_model=Person, max_retries=0, temperature=0,
                                         max_tokens=80, messages=[{"role": "user", "content": PROMPT}])
    assert isinstance(got, Person) and got.name == "Sofia" and got.age == 29
