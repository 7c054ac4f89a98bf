"""activation.plan: which adapters act on which tokens (aLoRA from the start of its invocation's
last occurrence, as PEFT's calculate_alora_offsets)."""

from __future__ import annotations

import pytest

from edge_lora.errors import InvalidRequestError
from edge_lora.runtime.activation import last_occurrence, plan, segments
from edge_lora.runtime.registry import AdapterSet


def _set(*adapters: tuple[str, tuple[int, ...]]) -> AdapterSet:
    """Named adapters at scale 1 (uids 1, 2, ...), sorted by name as the registry resolves them."""
    items = sorted(adapters)
    return AdapterSet(tuple((n, i + 1, 1.0) for i, (n, _) in enumerate(items)),
                      tuple((object(), 1.0) for _ in items), tuple(inv for _, inv in items))


def test_last_occurrence():
    assert last_occurrence([1, 2, 3, 1, 2], [1, 2]) == 3
    assert last_occurrence([1, 2, 3], [3]) == 2
    assert last_occurrence([1, 2, 3], [3, 4]) == -1
    assert last_occurrence([1], [1, 1]) == -1


def test_a_plain_set_is_one_run():
    s = _set(("a", ()))
    (run,) = plan(s, [5, 6, 7])
    assert (run.aset.key, run.start, run.end) == (s.key, 0, 3)


def test_an_alora_runs_from_its_last_invocation():
    s = _set(("al", (8, 9)), ("p", ()))
    tokens = [1, 8, 9, 2, 8, 9, 3]
    runs = plan(s, tokens)
    assert [(r.aset.scales, r.start, r.end) for r in runs] == [({"p": 1.0}, 0, 4), ({"al": 1.0, "p": 1.0}, 4, 7)]
    assert runs[-1].aset == s  # generation goes on under the whole set
    assert [len(x.tokens) for x in segments(runs, tokens)] == [4, 3]
    # the subset's key is what a call naming only "p" resolves to: the base KV is shared
    assert runs[0].aset.key == (("p", 2, 1.0),)


def test_two_alora_start_where_each_is_invoked_and_at_zero_there_is_one_run():
    s = _set(("x", (7,)), ("y", (8,)))
    runs = plan(s, [1, 7, 2, 8, 3])
    assert [(tuple(r.aset.scales), r.start, r.end) for r in runs] == [((), 0, 1), (("x",), 1, 3), (("x", "y"), 3, 5)]
    assert [(r.start, r.end) for r in plan(_set(("x", (1,))), [1, 2])] == [(0, 2)]


def test_every_missing_invocation_is_named():
    s = _set(("x", (7,)), ("y", (8, 8)), ("p", ()))
    with pytest.raises(InvalidRequestError) as e:
        plan(s, [8, 1, 8])
    assert e.value.problems == ["'x': its invocation tokens [7] are not in the prompt",
                                "'y': its invocation tokens [8, 8] are not in the prompt"]
