"""Chat templates written for the tests, for layouts whose model's own template llama.cpp's pinned
source tree does not ship (``models/templates``)."""

#: Phi-4-mini's tool layout, as its model card documents it: each tool in the system turn between
#: ``<|tool|>`` and ``<|/tool|>``, each call written ``<|tool_call|>{"name", "arguments"}<|/tool_call|>``
#: with no separator, a result as a ``<|tool_response|>`` turn
PHI4_MINI = """\
{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' -%}
{%- if system or tools -%}
  {{- '<|system|>' + system -}}
  {%- for tool in tools or [] -%}{{- '<|tool|>' + (tool['function'] | tojson) + '<|/tool|>' -}}{%- endfor -%}
  {{- '<|end|>' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if message['role'] == 'tool' -%}
    {{- '<|tool_response|>' + (message['content'] | tojson) + '<|end|>' -}}
  {%- elif message['role'] != 'system' -%}
    {{- '<|' + message['role'] + '|>' + (message['content'] or '') -}}
    {%- for call in message.tool_calls or [] -%}
      {{- '<|tool_call|>' + (call['function'] | tojson) + '<|/tool_call|>' -}}
    {%- endfor -%}
    {{- '<|end|>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}
"""

OWN = {"phi-4-mini-layout": PHI4_MINI}
