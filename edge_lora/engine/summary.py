"""One line on the engine in use, for status bars and logs."""

from __future__ import annotations


def engine_summary() -> str:
    """The backends llama.cpp uses and the CPU variant, e.g. ``"CPU (zen4)"`` or
    ``"CUDA0: NVIDIA H200, CPU (haswell)"``. Loads the backends if nothing did yet."""
    from . import native
    from .probe import cpu_variant, loaded_libraries

    parts = [f"{d.name}: {d.description}" for d in native.devices() if d.kind in ("gpu", "igpu")]
    parts.append(f"CPU ({cpu_variant(loaded_libraries())})")
    return ", ".join(parts)
