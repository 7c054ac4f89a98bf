"""Run in a child process by test_offload.py, on the engine LLAMA_CPP_LIB_PATH names:

    python tests/offload_child.py SPEC.json OUT.npz

SPEC: {"base": path, "adapters": {name: path}, "n_ctx": int, "kv_type": str, "runs": [{"n_gpu_layers": int,
"op_offload": bool, "calls": [{"key": str, "tokens": [...], "adapters": {name: scale}, "unload": [names],
"load": [names]}]}]}. Each run is one Runtime; each call evaluates ``tokens`` from scratch under
``adapters`` (after unloading/loading the named adapters) and stores the logits under ``key``.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(spec_path: str, out_path: str) -> int:
    from edge_lora import Runtime

    spec = json.loads(open(spec_path).read())
    out: dict[str, np.ndarray] = {}
    for run in spec["runs"]:
        with Runtime(spec["base"], n_ctx=spec.get("n_ctx", 256), kv_type=spec.get("kv_type", "f32"),
                     n_gpu_layers=run["n_gpu_layers"], op_offload=run.get("op_offload", True)) as rt:
            for name, path in spec["adapters"].items():
                rt.load_adapter(name, path)  # after the model is on the device
            for call in run["calls"]:
                for name in call.get("unload", []):
                    rt.unload_adapter(name)
                for name in call.get("load", []):
                    rt.load_adapter(name, spec["adapters"][name])
                out[call["key"]] = rt.logits(call["tokens"], call.get("adapters") or None)
    np.savez(out_path, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
