"""Convert a PEFT adapter to GGUF against its base, check it, and run a prompt with it.

    python examples/convert_and_run.py ADAPTER_DIR BASE.gguf OUT.gguf "prompt"
"""

from __future__ import annotations

import sys

from edge_lora import EdgeLoraError, Runtime
from edge_lora.inspect import describe
from edge_lora_convert import convert


def main(adapter: str, base: str, out: str, prompt: str) -> int:
    try:
        result = convert(adapter, base=base, out=out, outtype="f16", overwrite=True)
    except EdgeLoraError as exc:  # every problem of the checkpoint, listed at once
        print(exc, file=sys.stderr)
        return 2
    print(f"wrote {result.out_path}: {result.arch}, {result.modules} modules, alpha {result.alpha:g}")
    report = describe(out, base=base)
    print(f"ranks {report['ranks']}, {report['n_targets']} target tensors, "
          f"compatible with the base: {report['compatibility']['compatible']}")
    with Runtime(base, n_ctx=512) as rt:
        rt.load_adapter("mine", out)
        for label, mix in (("base", {}), ("adapter", {"mine": 1.0})):
            c = rt.complete(prompt, mix, temperature=0.0, max_tokens=16)
            print(f"{label}: {c.text!r} ({c.completion_tokens} tokens, {c.timings.ttft_ms:.0f} ms to first)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(*sys.argv[1:]))
