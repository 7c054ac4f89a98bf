"""Convert a PEFT adapter to GGUF against its base, then check the result's fit.

    python examples/convert_peft_adapter.py ADAPTER_DIR BASE.gguf OUT.gguf
"""

from __future__ import annotations

import sys

from edge_lora import EdgeLoraError
from edge_lora.inspect import describe
from edge_lora_convert import convert


def main(adapter: str, base: str, out: str) -> int:
    try:
        result = convert(adapter, base=base, out=out, outtype="f16", overwrite=True)
    except EdgeLoraError as exc:  # every problem of the checkpoint, listed at once
        print(exc, file=sys.stderr)
        return 2
    print(f"wrote {result.out_path}: {result.arch}, {result.modules} modules, alpha {result.alpha:g}")
    for note in result.notes:
        print(f"note: {note}")
    report = describe(out, base=base)
    print(f"ranks {report['ranks']}, {report['n_targets']} target tensors, "
          f"compatible with the base: {report['compatibility']['compatible']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(64)
    sys.exit(main(*sys.argv[1:]))
