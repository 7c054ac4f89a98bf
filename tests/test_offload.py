"""The GPU-offload path, run for real: the Vulkan engine (``make engine-vulkan-build``) on Mesa's
lavapipe, a software Vulkan device (``.ci/lavapipe``), against the CPU engine the suite runs on.

Every evaluation on the device runs in a child process (``tests/offload_child.py``, the Vulkan
libraries selected with ``LLAMA_CPP_LIB_PATH``). What is compared, and why the tolerances are what
they are, is in each test. Skipped where the Vulkan engine or the device is missing, unless
``EDGE_LORA_REQUIRE_VULKAN=1`` (``.ci/run``), where that is a failure. A CUDA or Metal machine runs
the same tests with ``EDGE_LORA_OFFLOAD_LIB`` naming its engine's library folder and no lavapipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter
from tiny_models import TOKENS, rel_err

from edge_lora import Runtime
from edge_lora_convert import convert

ROOT = Path(__file__).resolve().parents[1]
VULKAN_LIB = ROOT / "build" / "engine-vulkan-test" / "bin"
LONG = TOKENS * 3  # 48 tokens: past llama.cpp's op-offload threshold (32)


def _offload_env(tmp: Path) -> dict[str, str]:
    """The environment a child needs to run on the device, or a skip (a failure when required)."""
    required = os.environ.get("EDGE_LORA_REQUIRE_VULKAN") == "1"

    def unavailable(why: str):
        if required:
            pytest.fail(f"EDGE_LORA_REQUIRE_VULKAN=1 but {why}")
        pytest.skip(why)

    lib = Path(os.environ.get("EDGE_LORA_OFFLOAD_LIB", VULKAN_LIB))
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(lib), "EDGE_LORA_CACHE_DIR": str(tmp / "cache")}
    try:
        backend = json.loads((lib / "edge-lora-engine.json").read_text())["backend"]
    except (OSError, ValueError, KeyError):
        unavailable(f"no GPU engine build in {lib} (make engine-vulkan-build)")
    if backend == "vulkan" and "EDGE_LORA_OFFLOAD_LIB" not in os.environ:
        r = subprocess.run([str(ROOT / ".ci" / "lavapipe")], capture_output=True, text=True)
        if r.returncode != 0:
            unavailable(f".ci/lavapipe could not fetch Mesa's lavapipe: {r.stderr[-500:]}")
        for line in r.stdout.splitlines():
            k, _, v = line.removeprefix("export ").partition("=")
            env[k] = os.path.expandvars(v.replace("${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}",
                                                  (":" + env["LD_LIBRARY_PATH"]) if env.get("LD_LIBRARY_PATH") else ""))
    return env


def _child(env: dict[str, str], tmp: Path, spec: dict, name: str) -> dict[str, np.ndarray]:
    spec_path, out = tmp / f"{name}.json", tmp / f"{name}.npz"
    spec_path.write_text(json.dumps(spec))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "offload_child.py"), str(spec_path), str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"the child on the device exited {r.returncode}:\n{r.stderr[-3000:]}"
    with np.load(out) as z:
        return dict(z)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("offload")
    return _offload_env(tmp), tmp
