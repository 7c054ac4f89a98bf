"""The validation helpers every room uses: strict integers, finite numbers, the f16 range, and a
collector that reports every problem at once.

``bool`` is never accepted as a number (``True`` is an ``int`` in Python, never in a request).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .errors import EdgeLoraError, IncompatibleAdapterError

#: the largest finite float16 (IEEE 754 half precision): llama.cpp's f16 paths overflow beyond it
F16_MAX = 65504.0


def is_int(value: object) -> bool:
    """An ``int`` (NumPy integers included), not a ``bool``."""
    import numpy as np

    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: object) -> bool:
    """A finite ``int`` or ``float``, not a ``bool`` (an int too large for a float is not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def int_problem(name: str, value: object, *, lo: int | None = None, hi: int | None = None) -> str | None:
    """Why ``value`` is not an integer in ``[lo, hi]`` (either bound may be open), or None."""
    ok = is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)  # type: ignore[operator]
    if ok:
        return None
    if lo == 1 and hi is None:
        return f"{name} must be a positive integer, got {value!r}"
    return f"{name} must be an integer{_range(lo, hi)}, got {value!r}"


def number_problem(name: str, value: object, *, lo: float | None = None, hi: float | None = None) -> str | None:
    """Why ``value`` is not a finite number in ``[lo, hi]`` (either bound may be open), or None."""
    ok = is_number(value) and (lo is None or value >= lo) and (hi is None or value <= hi)  # type: ignore[operator]
    if ok:
        return None
    return f"{name} must be a finite number{_range(lo, hi)}, got {value!r}"


def f16_problem(name: str, value: float) -> str | None:
    """Why a scale or alpha ``value`` is beyond the f16 range (±65504), or None."""
    if abs(value) <= F16_MAX:
        return None
    return f"{name}={value:g} is beyond ±65504: llama.cpp's f16 paths would overflow"


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f" >= {lo:g}"
    if hi is not None:
        return f" <= {hi:g}"
    return ""


class Problems:
    """Every problem found, raised at once: ``p.add(int_problem(...))`` (None is skipped), then
    ``p.raise_if_any(InvalidRequestError, "invalid options")``."""

    def __init__(self) -> None:
        self.items: list[str] = []
        #: the argument named by the first problem added with one
        self.param: str | None = None

    def add(self, problem: str | None, *, param: str | None = None) -> None:
        if problem:
            self.items.append(problem)
            self.param = self.param or param

    def extend(self, problems: Iterable[str | None]) -> None:
        for p in problems:
            self.add(p)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, cls: type[EdgeLoraError], message: str) -> None:
        if self.items:
            raise cls(message, self.items, **({"param": self.param} if self.param else {}))


def combined_error(message: str, errors: Sequence[EdgeLoraError], more: Sequence[str] = (),
                   default: type[EdgeLoraError] = IncompatibleAdapterError) -> EdgeLoraError:
    """One error for the errors of several inputs (every message and problem listed, then ``more``):
    of their class when they share one and nothing else was found (a missing file stays a
    GGUFFileError), else ``default``."""
    problems: list[str] = []
    for e in errors:
        problems.append(e.message)
        problems += [f"  {p}" for p in e.problems]
    kinds = {type(e) for e in errors}
    cls = kinds.pop() if len(kinds) == 1 and not more else default
    return cls(message, [*problems, *more])
