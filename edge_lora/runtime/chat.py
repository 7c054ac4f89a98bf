"""Chat prompts from the model's own template (the GGUF's ``tokenizer.chat_template``).

Templates are Jinja, rendered in a sandbox as Hugging Face does. A base without a
template (base models such as gemma-3-270m ship none) gets a fallback chosen by
the special tokens its vocabulary has, as llama.cpp detects templates: Gemma turns
(``<start_of_turn>``), Llama 3 headers (``<|start_header_id|>``), ChatML
(``<|im_start|>``), else plain ``User:``/``Assistant:`` lines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError

ROLES = ("system", "user", "assistant")

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma has no system role: a system message is put before the first user turn, as Gemma's own template does
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.sys }}{% set ns.sys = '' %}{% endif %}{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
#: (special token that identifies the family, fallback template, name), first match wins
FALLBACKS = (
    ("<start_of_turn>", GEMMA_TEMPLATE, "gemma"),
    ("<|start_header_id|>", LLAMA3_TEMPLATE, "llama3"),
    ("<|im_start|>", CHATML_TEMPLATE, "chatml"),
)


def fallback_template(is_special_token: Callable[[str], bool]) -> tuple[str, str]:
    """(template, name) for a base without its own chat template."""
    for token, template, name in FALLBACKS:
        if is_special_token(token):
            return template, name
    return PLAIN_TEMPLATE, "plain"


def check_messages(messages: object) -> list[dict[str, str]]:
    """Validate chat messages; every problem is reported at once."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} objects")
    problems = []
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            problems.append(f"messages[{i}]: not an object")
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(f"messages[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content: must be a string")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            problems.append(f"messages[{i}]: unknown fields {sorted(extra)}")
        out.append({"role": str(role), "content": content if isinstance(content, str) else ""})
    if problems:
        raise InvalidRequestError("invalid chat messages", problems)
    return out


def _raise(message: str) -> None:
    raise InvalidRequestError(f"the chat template refused these messages: {message}")


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str,
                 is_special_token: Callable[[str], bool] = lambda _t: False) -> None:
        self.name = "model"
        if not source:
            source, self.name = fallback_template(is_special_token)
        self.source = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"the model's chat template does not compile: {exc}") from exc
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        msgs = check_messages(messages)
        try:
            return self._template.render(
                messages=msgs,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except InvalidRequestError:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidRequestError(f"the chat template failed on these messages: {exc}") from exc
