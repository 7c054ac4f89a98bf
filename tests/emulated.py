"""Children run on an older x86-64 CPU emulated by qemu-user (Debian's ``qemu-user``)."""

from __future__ import annotations

import shutil

QEMU = shutil.which("qemu-x86_64")


def emulated(cpu: str) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run a child on ``cpu`` (a qemu CPU model: Haswell,
    Nehalem). numpy's OpenBLAS is told the CPU: its own detection reads the emulated CPUID as a
    Haswell on some hosts (seen on this machine, qemu 7.2: ``Core: Haswell`` under ``-cpu
    Nehalem``) and dies of SIGILL in numpy's import-time self-check, before edge-lora runs. On
    real hardware OpenBLAS reads the real CPUID."""
    return [QEMU, "-cpu", cpu], {"OPENBLAS_CORETYPE": cpu}
