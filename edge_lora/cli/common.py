"""What several commands share: adapter arguments (``NAME=PATH[:SCALE]``, ``ADAPTER[:SCALE]``, ``/use NAME[:SCALE]``)."""

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


def parse_adapter_spec(spec: str) -> tuple[str, str, float]:
    """``NAME=PATH[:SCALE]`` -> (name, path, scale)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InvalidRequestError(f"--adapter {spec!r}: expected NAME=PATH[:SCALE]")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass  # a ':' inside the path itself
    return name, path, scale


def parse_use(words: list[str]) -> dict[str, float]:
    mix: dict[str, float] = {}
    for w in words:
        name, colon, scale = w.partition(":")
        try:
            mix[name] = float(scale) if colon else None  # type: ignore[assignment]
        except ValueError as exc:
            raise InvalidRequestError(f"/use {w}: SCALE must be a number") from exc
    return mix
