"""Activated LoRA (aLoRA) in the runtime, against PEFT's aLoRA forward: the adapter acts from the
start of the last occurrence of its invocation tokens on, so the tokens before it are the base's
(or the other adapters') and their KV is reused by an aLoRA turn after a base conversation.

Tolerances: logits relative error <= 1e-3 against transformers + PEFT (f32 KV); before the
invocation the aLoRA call's logits are the base's own to 1e-5 (the same graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from adapters import make_peft_adapter, peft_logits
from tiny_models import TOKENS, hf_logits, rel_err

from edge_lora import InvalidRequestError, Runtime
from edge_lora_convert import convert

RTOL = 1e-3
MIN_EFFECT = 0.05
#: "@#" in the tiny vocabulary (byte tokens); SEQ holds it once, at 6..7
INVOCATION = [67, 38]
SEQ = TOKENS[:6] + INVOCATION + TOKENS[6:]
CFG = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])


@pytest.fixture(scope="module")
def alora(tiny, tmp_path_factory):
    t = tiny("llama2")
    d = tmp_path_factory.mktemp("alora")
    ref = make_peft_adapter(t.model, d / "alora", {**CFG, "alora_invocation_tokens": INVOCATION}, seed=5)
    plain = make_peft_adapter(t.model, d / "plain", CFG, seed=6)
    convert(d / "alora", base=t.base_path, out=d / "alora.gguf", outtype="f32")
    convert(d / "plain", base=t.base_path, out=d / "plain.gguf", outtype="f32")
    return t, d, ref, plain


def _runtime(t, d: Path, **kw) -> Runtime:
    rt = Runtime(t.base_path, n_ctx=256, kv_type="f32", **kw)
    rt.load_adapter("al", d / "alora.gguf")
    rt.load_adapter("plain", d / "plain.gguf")
    return rt


@pytest.mark.parametrize("tokens", [SEQ, SEQ[:10] + TOKENS[2:] + INVOCATION + [5, 9]],
                         ids=["once", "twice-the-last-counts"])
def test_alora_logits_match_peft_before_and_after_the_invocation(alora, tokens):
    t, d, ref, _ = alora
    start = max(i for i in range(len(tokens) - 1) if tokens[i : i + 2] == INVOCATION)
    want = peft_logits(ref, tokens)
    base = hf_logits(t.model, tokens)
    # PEFT's aLoRA leaves the tokens before the invocation alone and moves the rest
    assert rel_err(want[:start], base[:start]) < 1e-6
    assert rel_err(want[start:], base[start:]) > MIN_EFFECT
    with _runtime(t, d) as rt:
        got = rt.logits(tokens, {"al": 1.0})
        ours_base = rt.logits(tokens)
    before, after = rel_err(got[:start], want[:start]), rel_err(got[start:], want[start:])
    print(f"aLoRA parity: before the invocation {before:.2e}, from it on {after:.2e}")
    assert after <= RTOL and before <= RTOL
    np.testing.assert_allclose(got[:start], ours_base[:start], rtol=1e-5, atol=1e-5)


def test_alora_mixed_with_a_plain_lora_matches_peft(alora, tmp_path):
    """A plain LoRA acts on every token, the aLoRA from its invocation on: PEFT with both adapters
    active, at scale 1 (PEFT works out the offsets only for the first active adapter, so the aLoRA's
    offset is passed as PEFT's own ``alora_offsets``: the tokens from the invocation's start on)."""
    t, d, ref, plain = alora
    import copy

    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(t.model), d / "plain", adapter_name="plain")
    model.load_adapter(d / "alora", adapter_name="al")
    model.base_model.set_adapter(["plain", "al"])
    model.eval()
    import torch

    with torch.no_grad():
        want = model(torch.tensor([SEQ]), alora_offsets=[len(SEQ) - 6]).logits[0].float().numpy()
    plain_only = peft_logits(plain, SEQ)
    assert rel_err(want[6:], plain_only[6:]) > MIN_EFFECT  # the aLoRA acts after the invocation
    with _runtime(t, d) as rt:
        got = rt.logits(SEQ, {"al": 1.0, "plain": 1.0})
    err = rel_err(got, want)
    print(f"aLoRA + plain LoRA parity: {err:.2e}")
    assert err <= RTOL and rel_err(got[:6], plain_only[:6]) <= RTOL


WORDS = "the quick brown fox jumps over a lazy dog while seven tired owls watch".split()


def _history(n_words: int) -> str:
    """A deterministic plain-ASCII text of ``n_words`` words, without the invocation in it."""
    rng = np.random.default_rng(0)
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=n_words))


def test_an_alora_turn_reuses_the_base_kv_and_equals_a_fresh_evaluation(alora):
    """A base 'conversation' held in the KV, continued with the aLoRA: only the tokens from the
    invocation on are evaluated, and the answer is the one a fresh evaluation gives; switching
    back to the base keeps the base prefix."""
    t, d, _, _ = alora
    history = _history(20)
    invoked = history + " and@# x"
    with _runtime(t, d, snapshot_mb=0) as rt:
        n_history = len(rt.tokenize(history))
        ids = rt.tokenize(invoked)
        start = max(i for i in range(len(ids) - 1) if ids[i : i + 2] == INVOCATION)
        rt.complete(history, max_tokens=4, temperature=0)
        turn = rt.complete(invoked, {"al": 1.0}, max_tokens=6, temperature=0)
        assert n_history <= turn.cached_tokens <= start  # the base's KV, up to the invocation at most
        plain = rt.complete(invoked, {"plain": 1.0}, max_tokens=6, temperature=0)
        assert plain.cached_tokens == 0  # a plain LoRA's KV differs from the first token on
        back = rt.complete(history + " more", max_tokens=2, temperature=0)
        assert back.cached_tokens == 0  # the plain LoRA's history replaced the base's (no snapshots)
    with _runtime(t, d, snapshot_mb=0) as fresh:
        scratch = fresh.complete(invoked, {"al": 1.0}, max_tokens=6, temperature=0)
    assert scratch.cached_tokens == 0 and scratch.tokens == turn.tokens
    with _runtime(t, d, snapshot_mb=0) as rt:
        rt.complete(history, max_tokens=1, temperature=0)
        rt.complete(invoked, {"al": 1.0}, max_tokens=6, temperature=0)
        back = rt.complete(history + " more", max_tokens=2, temperature=0)
        assert back.cached_tokens >= n_history  # back to the base: the base prefix was kept


def test_logits_of_an_alora_turn_after_the_base_equal_the_fresh_ones(alora):
    """The KV left by a base call, reused up to the invocation, gives the logits a fresh aLoRA
    evaluation gives (the tokens before the invocation are the base's in both): the last prompt
    token's logits, as the sampler sees them."""
    from edge_lora.runtime.activation import plan, segments
    from edge_lora.runtime.decode import evaluate

    t, d, _, _ = alora
    history = _history(12)
    with _runtime(t, d) as rt:
        ids = rt.tokenize(history + "@# x")
        fresh = rt.logits(ids, {"al": 1.0})[-1]
        rt.complete(history, max_tokens=1, temperature=0)
        with rt._call({"al": 1.0}) as (slot, aset):
            runs = plan(aset, ids)
            assert [len(r.aset.key) for r in runs] == [0, 1]  # the base, then the aLoRA
            cached = rt._pool.prepare(slot, segments(runs, ids))
            assert cached == len(rt.tokenize(history))
            evaluate(slot, runs, ids, cached)
            reused = np.array(slot.ctx.last_logits())
    np.testing.assert_allclose(reused, fresh, rtol=1e-5, atol=1e-5)


def test_a_prompt_without_the_invocation_is_refused(alora):
    t, d, _, _ = alora
    with _runtime(t, d) as rt:
        ids = rt.tokenize(_history(10))
        for call in (lambda: rt.logits(ids, {"al": 1.0}),
                     lambda: rt.stream(rt.detokenize(ids), {"al": 1.0}),  # refused at the call, not lazily
                     lambda: rt.chat([{"role": "user", "content": rt.detokenize(ids)}], {"al": 1.0, "plain": 1.0})):
            with pytest.raises(InvalidRequestError) as e:
                call()
            assert "'al': its invocation tokens [67, 38] are not in the prompt" in str(e.value)
            assert e.value.param == "adapters"
        assert rt.complete(rt.detokenize(ids), {"al": 0.0}, max_tokens=1).finish_reason  # scale 0: not in the set


def test_inspect_and_adapters_show_the_invocation(alora):
    t, d, _, _ = alora
    with _runtime(t, d) as rt:
        assert rt.adapters["al"].invocation_tokens == tuple(INVOCATION)
        assert rt.adapters["plain"].invocation_tokens == ()
