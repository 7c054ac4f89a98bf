"""``ADAPTER[:SCALE]`` command-line arguments (merge, combine)."""

from __future__ import annotations

import math

from ..errors import InvalidRequestError


def parse_adapter_arg(text: str) -> tuple[str, float]:
    """``"json.gguf:0.5"`` -> ``("json.gguf", 0.5)``; no ``:SCALE`` means 1.0. Negative scales are
    allowed (as in the runtime); a path that itself contains ``:`` works when a scale follows or
    when what follows the last ``:`` is not a number.

    Raises :class:`InvalidRequestError` for an empty path or a scale that is not finite."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            path = head
            if not math.isfinite(scale):
                raise InvalidRequestError(f"{text!r}: the scale {tail!r} is not a finite number")
    if not path:
        raise InvalidRequestError(f"{text!r}: no adapter path")
    return path, scale
