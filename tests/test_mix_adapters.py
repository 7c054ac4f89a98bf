"""Several all-linear adapters mixed in one call, on every supported architecture: the runtime
against transformers + PEFT with the same adapters all active (relative error <= 2e-3 on the
logits, f32 KV; the mix moving the logits by > 0.05), applied one by one and combined into one
adapter (edge_lora/runtime/mixes.py), and many adapters at once on the
architectures whose graph budget llama.cpp sizes apart (qwen35, qwen35moe): without
cmake/patches/0001-graph-max-nodes-lora-every-arch.patch, 12 to 24 adapters there abort the process."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from adapters import all_linear, make_peft_adapter
from peft import PeftModel
from tiny_models import CASES, TOKENS, hf_logits, rel_err

from edge_lora import Runtime
from edge_lora_convert import convert

RTOL, MIN_EFFECT, N_MIX = 2e-3, 0.05, 4


@pytest.mark.parametrize("case", CASES)
def test_four_all_linear_adapters_mixed_match_peft(tiny, tmp_path, case):
    t = tiny(case)
    folders = []
    for i in range(N_MIX):
        make_peft_adapter(t.model, tmp_path / f"a{i}", dict(r=4, lora_alpha=8, **all_linear(case)), seed=20 + i)
        convert(tmp_path / f"a{i}", base=t.base_path, out=tmp_path / f"a{i}.gguf", outtype="f32")
        folders.append(tmp_path / f"a{i}")
    ref = PeftModel.from_pretrained(copy.deepcopy(t.model), folders[0], adapter_name="a0")
    for i, f in enumerate(folders[1:], 1):
        ref.load_adapter(f, adapter_name=f"a{i}")
    ref.base_model.set_adapter([f"a{i}" for i in range(N_MIX)])  # PEFT adds every active adapter's delta
    ref.eval()
    with torch.no_grad():
        want = ref(torch.tensor([TOKENS])).logits[0].float().numpy()
    assert rel_err(want, hf_logits(t.model, TOKENS)) > MIN_EFFECT
    with Runtime(t.base_path, n_ctx=64, kv_type="f32") as rt:
        for i in range(N_MIX):
            rt.load_adapter(f"a{i}", tmp_path / f"a{i}.gguf")
        mix = {f"a{i}": 1.0 for i in range(N_MIX)}
        got = rt.logits(TOKENS, mix)  # one by one (the set's first call)
        assert rt.prepare_mix(mix)  # then as one adapter (edge_lora/runtime/mixes.py)
        got_one = rt.logits(TOKENS, mix)
    err, err_one = rel_err(got, want), rel_err(got_one, want)
    print(f"{N_MIX} adapters mixed on {case}: {err:.1e}, as one adapter {err_one:.1e}")
    assert err <= RTOL and err_one <= RTOL


@pytest.mark.parametrize("case", ["qwen35", "qwen35moe"])
def test_many_adapters_mixed_where_llama_cpp_sizes_the_graph_apart(tiny, tmp_path, case):
    """24 loads of one all-linear adapter at scale 0.1 each, n_batch 1 and 512 (the budget that
    starts from n_tokens * 40): no abort (a child process would die with SIGABRT), and the logits
    of the one adapter at scale 2.4, since the deltas add."""
    t = tiny(case)
    make_peft_adapter(t.model, tmp_path / "a", dict(r=8, lora_alpha=16, **all_linear(case)), seed=1)
    convert(tmp_path / "a", base=t.base_path, out=tmp_path / "a.gguf", outtype="f32")
    for n_batch in (1, 512):
        code = textwrap.dedent(f"""
            import numpy as np
            from edge_lora import Runtime
            with Runtime({str(t.base_path)!r}, n_ctx=64, n_batch={n_batch}, kv_type="f32") as rt:
                for i in range(24):
                    rt.load_adapter(f"a{{i}}", {str(tmp_path / "a.gguf")!r})
                mixed = rt.logits({TOKENS!r}, {{f"a{{i}}": 0.1 for i in range(24)}})
                one = rt.logits({TOKENS!r}, {{"a0": 2.4}})
            np.save({str(tmp_path / f"out{n_batch}.npy")!r}, np.stack([mixed, one]))
        """)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"n_batch {n_batch}: exit {r.returncode}\n{r.stderr[-2000:]}"
        mixed, one = np.load(tmp_path / f"out{n_batch}.npy")
        assert np.isfinite(mixed).all() and rel_err(mixed, one) <= 1e-4
