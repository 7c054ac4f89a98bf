"""What this machine's CPU offers, read without loading any native code.

On Linux the kernel's ``/proc/cpuinfo`` flags list only the features the OS has enabled
(AVX-512 is absent when the kernel does not save its registers), which is what a build may
rely on. ggml's own variant check reads CPUID only (``ggml-cpu/arch/x86/cpu-feats.cpp``).
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

#: the x86 features ggml has kernels or variants for (Linux /proc/cpuinfo spelling)
X86_FEATURES = (
    "sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx_vnni", "avx512f", "avx512cd", "avx512vl",
    "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
)
ARM_FEATURES = ("asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "sme")


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the CPU's name; ``arch``: ``platform.machine()``; ``features``: the flags above
    that this CPU (and OS) has; ``fingerprint``: a short hash of model and all flags."""

    model: str
    arch: str
    features: tuple[str, ...]
    fingerprint: str


def _linux() -> tuple[str, set[str]]:
    model, flags = "", set()
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Processor", "CPU part") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    return model, flags


def _darwin() -> tuple[str, set[str]]:
    def sysctl(*args: str) -> str:
        try:
            return subprocess.run(["sysctl", *args], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    model = sysctl("-n", "machdep.cpu.brand_string").strip()
    flags = set()
    for line in sysctl("hw.optional").splitlines():
        key, _, value = line.partition(":")
        if value.strip() == "1":
            flags.add(key.strip().rsplit(".", 1)[-1].lower())
    return model, flags


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached for the process)."""
    try:
        model, flags = _linux() if sys.platform.startswith("linux") else _darwin() if sys.platform == "darwin" else ("", set())
    except OSError:
        model, flags = "", set()
    model = model or platform.processor() or "unknown CPU"
    arch = platform.machine()
    known = X86_FEATURES if arch.lower() in ("x86_64", "amd64") else ARM_FEATURES
    features = tuple(f for f in known if f in flags)
    digest = hashlib.sha256(f"{arch}|{model}|{' '.join(sorted(flags))}".encode()).hexdigest()[:16]
    return CpuInfo(model=model, arch=arch, features=features, fingerprint=digest)
