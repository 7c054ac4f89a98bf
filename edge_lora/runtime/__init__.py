"""The device side: one base served with many adapters.

- :mod:`.runtime`: the :class:`Runtime` facade;
- :mod:`.request`: what a call asks for (:class:`SamplingParams`) and gets (:class:`Completion`);
- :mod:`.registry`: loaded adapters by name, and the adapter set of a call;
- :mod:`.kv`: the contexts, what their KV holds, snapshots;
- :mod:`.decode`: the token loop and stop strings;
- :mod:`.chat`, :mod:`.session`, :mod:`.memory`.

``Runtime`` is imported on first use (it loads the native engine).
"""

from __future__ import annotations

_LAZY = {"Runtime": ".runtime", "TextStream": ".request"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
