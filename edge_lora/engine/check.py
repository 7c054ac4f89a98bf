"""Run the engine probe in a child process and keep its verdict per library build and CPU.

The first :class:`~edge_lora.Runtime` with a given set of native libraries on a given CPU
runs the smoke test of :mod:`edge_lora.engine.probe` in a child process (so a build that
faults on this CPU cannot kill the caller) and caches the verdict in
``engine-verdicts.json`` under the user cache folder (``$EDGE_LORA_CACHE_DIR``, else
``$XDG_CACHE_HOME/edge-lora``, ``~/Library/Caches/edge-lora`` or ``%LOCALAPPDATA%\\edge-lora``).
The key is the library files (name, size, mtime), the CPU (:mod:`edge_lora.engine.cpu`) and
the smoke test's version; on a GPU build also the device's driver (:func:`driver_signature`),
and the smoke test then runs offloaded to the device, across adapter-set changes on batches
that llama.cpp's op offload sends to the GPU: a faulting driver is an :class:`EngineBuildError`
naming the device, the driver and the fix, not a dead process. ``EDGE_LORA_ENGINE_CHECK=0`` turns the check off (for an app that
ran ``edge-lora doctor`` at install time).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..outputs import atomic_path
from ..errors import EngineBuildError
from .cpu import cpu_info

#: bump when the smoke test changes, so cached verdicts are taken again
SMOKE_VERSION = 3
FIX = (
    "rebuild the engine with edge-lora's portable CPU build: from a clone of edge-lora, `make engine` "
    "(or the cmake commands under Install in README); `edge-lora doctor` shows what failed"
)
FIX_DEVICE = (
    "update the GPU driver (Mesa's lavapipe: 25.0 or later), or hide the device to run on the CPU "
    "(GGML_VK_VISIBLE_DEVICES= for Vulkan, CUDA_VISIBLE_DEVICES= for CUDA); `edge-lora doctor` shows what failed"
)
FIX_SLOW_DEVICE = (
    "run it again: the driver keeps the shaders it compiled in its own cache, so the check goes on where it "
    "stopped (Mesa's software lavapipe compiles for many minutes the first time); EDGE_LORA_ENGINE_CHECK=0 skips it"
)
#: what selects a GPU device and its driver: part of the verdict's key on GPU builds
DEVICE_ENV = ("GGML_VK_VISIBLE_DEVICES", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "CUDA_VISIBLE_DEVICES",
              "HIP_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "LP_NATIVE_VECTOR_WIDTH")
_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
log = logging.getLogger(__name__)
_lock = threading.Lock()
_passed: set[str] = set()


def lib_dir() -> Path | None:
    """Where llama-cpp-python will load its libraries from, found without loading them."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "lib"


def manifest(directory: Path | None = None) -> dict[str, Any] | None:
    """``edge-lora-engine.json`` written by edge-lora's CMake install, or None (another build)."""
    d = directory or lib_dir()
    try:
        return json.loads((d / "edge-lora-engine.json").read_text()) if d else None
    except (OSError, ValueError):
        return None


def fingerprint(directory: Path | None = None) -> str:
    """The cache key: the native libraries' names, sizes and mtimes, the CPU, the test version."""
    d = directory or lib_dir()
    files = []
    if d and d.is_dir():
        for p in sorted(d.iterdir()):
            if ("ggml" in p.name or "llama" in p.name) and p.is_file():
                st = p.stat()
                files.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    key: list[Any] = [SMOKE_VERSION, str(d), files, cpu_info().fingerprint, sys.platform]
    if gpu_build(d):
        key.append(driver_signature())
    return json.dumps(key)


def gpu_build(directory: Path | None = None) -> bool:
    """Whether these libraries were built with a GPU backend (edge-lora's build record says)."""
    m = manifest(directory)
    return bool(m) and m.get("backend", "cpu") != "cpu"


def _stat(path: Path) -> str:
    try:
        st = path.stat()
        return f"{path}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path}:-"


def driver_signature() -> list[str]:
    """What decides the device and its driver, read without loading them: the selecting
    environment variables, the Vulkan ICD manifests and the libraries they name, NVIDIA's
    kernel driver version."""
    out = [f"{k}={os.environ[k]}" for k in DEVICE_ENV if k in os.environ]
    named = [Path(p) for k in ("VK_ICD_FILENAMES", "VK_DRIVER_FILES") for p in os.environ.get(k, "").split(os.pathsep) if p]
    icds = named or [p for d in _ICD_DIRS if Path(d).is_dir() for p in sorted(Path(d).glob("*.json"))]
    for icd in icds:
        out.append(_stat(icd))
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lib = Path(json.loads(icd.read_text())["ICD"]["library_path"])
            out.append(_stat(lib if lib.is_absolute() else icd.parent / lib) if "/" in str(lib) else f"lib:{lib}")
    with contextlib.suppress(OSError):
        out.append(Path("/proc/driver/nvidia/version").read_text().splitlines()[0])
    return out


def probe_args() -> list[str]:
    """The smoke test's arguments for these libraries: offloaded on a GPU build."""
    return ["--smoke", "--offload"] if gpu_build() else ["--smoke"]


TIMEOUT_REASON = "the probe did not finish in"


def probe_timeout() -> float:
    """Seconds the smoke test may take: a GPU driver compiles its shaders on first use (Mesa's
    software lavapipe on 2 cores: about 21 minutes the first time, about a minute with its shader cache)."""
    return 1800.0 if gpu_build() else 300.0


def failure_message(result: ProbeResult | dict[str, Any]) -> tuple[str, str]:
    """``(what failed, the fix)`` for a failed verdict: a GPU device is named with its driver."""
    data = result.data if isinstance(result, ProbeResult) else result
    reason = result.reason if isinstance(result, ProbeResult) else str(result.get("reason"))
    device = data.get("offload_device") if isinstance(data, dict) else None
    if reason.startswith(TIMEOUT_REASON) and gpu_build():
        return reason, FIX_SLOW_DEVICE
    if device:
        drivers = [x for x in driver_signature() if x.startswith(("/", "lib:")) or "NVRM" in x]
        return (f"offloaded to {device} (driver {', '.join(drivers) or 'unknown'}): {reason}", FIX_DEVICE)
    return reason, FIX


@dataclass
class ProbeResult:
    """What a probe child reported: ``ok`` and its ``reason`` when not; ``data`` its JSON."""

    ok: bool
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    returncode: int = 0
    stderr: str = ""
    seconds: float = 0.0


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        what = {"SIGILL": "an instruction this CPU does not have (or may not use)", "SIGABRT": "an abort (a failed assertion)",
                "SIGSEGV": "a memory fault", "SIGBUS": "a bus error"}.get(name, "a signal")
        return f"the engine died of {name}: {what}"
    return f"the probe exited with status {rc}"


def run_probe(args: list[str] = ("--smoke",), *, wrapper: list[str] = (), env: dict[str, str] | None = None,
              timeout: float = 300.0) -> ProbeResult:
    """Run ``python -m edge_lora.engine.probe ARGS`` in a child (``wrapper`` goes before the
    interpreter, e.g. ``["qemu-x86_64", "-cpu", "Haswell"]``); in a frozen app, the app's own
    executable with ``--edge-lora-probe``. Never raises for the child's fate."""
    if getattr(sys, "frozen", False):  # a bundled app: its executable runs the probe (probe.frozen_dispatch)
        from .probe import FROZEN_FLAG

        cmd = [*wrapper, sys.executable, FROZEN_FLAG, *args]
    else:
        cmd = [*wrapper, sys.executable, "-m", "edge_lora.engine.probe", *args]
    child_env = {**os.environ, **(env or {})}
    # the child must import this edge_lora, even when it is not installed
    root = str(Path(__file__).resolve().parents[2])
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"{TIMEOUT_REASON} {timeout:.0f} s", seconds=time.perf_counter() - t0)
    except OSError as exc:
        return ProbeResult(False, f"could not start the probe: {exc}", seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    data: dict[str, Any] = {}
    lines = proc.stdout.strip().splitlines()
    if lines:
        with contextlib.suppress(ValueError):
            data = json.loads(lines[-1])
    stderr_tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    if proc.returncode != 0 and not data:
        return ProbeResult(False, _describe_exit(proc.returncode), returncode=proc.returncode, stderr=stderr_tail, seconds=seconds)
    smoke = data.get("smoke")
    if smoke is not None and not smoke.get("ok"):
        return ProbeResult(False, "the smoke test computed wrong numbers: " + "; ".join(smoke.get("problems", [])),
                           data, proc.returncode, stderr_tail, seconds)
    if proc.returncode != 0:
        return ProbeResult(False, _describe_exit(proc.returncode), data, proc.returncode, stderr_tail, seconds)
    return ProbeResult(True, "", data, 0, stderr_tail, seconds)


def cache_file() -> Path:
    base = os.environ.get("EDGE_LORA_CACHE_DIR")
    if base:
        return Path(base) / "engine-verdicts.json"
    if sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "edge-lora" / "engine-verdicts.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


#: child deaths that say the build cannot run here; others (SIGKILL, SIGTERM: someone killed it)
#: and probes that could not start or finish are not kept, so the next Runtime tries again
_BUILD_SIGNALS = {"SIGILL", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGFPE"}


def definitive(result: ProbeResult) -> bool:
    """Whether ``result`` says something lasting about the build on this CPU."""
    if result.ok or "computed wrong numbers" in result.reason:
        return True
    if result.returncode < 0:
        try:
            return signal.Signals(-result.returncode).name in _BUILD_SIGNALS
        except ValueError:
            return False
    return result.returncode > 0 and bool(result.stderr)


def record(key: str, result: ProbeResult) -> None:
    """Store ``result`` as the verdict for ``key`` (atomically; a cache that cannot be written is
    skipped; a transient failure is not stored)."""
    if not definitive(result):
        return
    verdicts = _read_cache()
    what, fix = failure_message(result)
    verdicts[key] = {
        "ok": result.ok,
        "reason": what if not result.ok else "",
        "fix": fix if not result.ok else "",
        "cpu_variant": result.data.get("cpu_variant"),
        "seconds": round(result.seconds, 3),
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(OSError):
        with atomic_path(cache_file()) as tmp:
            tmp.write_text(json.dumps(verdicts, indent=1))


def ensure_engine_ok() -> None:
    """Raise :class:`EngineBuildError` unless this machine's engine build passed its smoke test
    (run now in a child process, once per library build and CPU, then cached)."""
    if os.environ.get("EDGE_LORA_ENGINE_CHECK", "1") == "0":
        return
    key = fingerprint()
    if key in _passed:
        return
    with _lock:
        if key in _passed:
            return
        verdict = _read_cache().get(key)
        if not isinstance(verdict, dict):  # none yet, or a damaged entry
            verdict = None
        if verdict is None:
            if gpu_build():
                log.warning("checking the engine on the GPU device, once per build and driver: the driver compiles "
                            "its shaders the first time (minutes on a software device)")
            result = run_probe(probe_args(), timeout=probe_timeout())
            record(key, result)
            what, fix = failure_message(result)
            verdict = {"ok": result.ok, "reason": what, "fix": fix}
        if not verdict.get("ok"):
            raise EngineBuildError(
                f"the native engine in {lib_dir()} failed its smoke test on this machine: {verdict.get('reason')}",
                [verdict.get("fix") or FIX],
            )
        _passed.add(key)
