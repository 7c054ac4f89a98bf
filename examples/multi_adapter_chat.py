"""A scripted multi-adapter conversation: one session, the adapter mix switched between turns.

    python examples/multi_adapter_chat.py BASE.gguf NAME=ADAPTER.gguf [NAME=ADAPTER.gguf ...]

Each turn is answered by a different mix (each adapter alone, then all at half
scale, then the base); the history is kept, and returning to a mix restores its
KV snapshot instead of recomputing the conversation.
"""

from __future__ import annotations

import sys

from edge_lora import Runtime


def main(base: str, specs: list[str]) -> int:
    adapters = dict(spec.split("=", 1) for spec in specs)
    with Runtime(base, n_ctx=2048) as rt:
        for name, path in adapters.items():
            rt.load_adapter(name, path)
        mixes = [{n: 1.0} for n in adapters] + [{n: 0.5 for n in adapters}, {}] + [{n: 1.0} for n in adapters][:1]
        session = rt.session(temperature=0.0, max_tokens=16)
        for turn, mix in enumerate(mixes):
            session.use(mix)
            c = session.send(f"Turn {turn}: tell me something.")
            label = ", ".join(f"{n}:{s:g}" for n, s in mix.items()) or "base"
            print(f"[{label}] {c.text.strip()!r} (prompt {c.prompt_tokens} tokens, {c.cached_tokens} reused)")
        print(f"{len(session.messages)} messages in the session")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
