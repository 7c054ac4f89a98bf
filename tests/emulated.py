"""Children run on an older x86-64 CPU emulated by qemu-user (Debian's ``qemu-user``)."""

from __future__ import annotations

import shutil

QEMU = shutil.which("qemu-x86_64")


def emulated(cpu: str) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that run a child on ``cpu`` (a qemu CPU model: Haswell,
    Nehalem). numpy's OpenBLAS is told the emulated CPU: an ``OPENBLAS_CORETYPE`` inherited from
    the machine (this one exports ``OPENBLAS_CORETYPE=Haswell``) makes it run Haswell kernels on
    the emulated Nehalem, which dies of SIGILL in numpy's import-time self-check before edge-lora
    runs."""
    return [QEMU, "-cpu", cpu], {"OPENBLAS_CORETYPE": cpu}
