"""Mixes run as one adapter (edge_lora/runtime/mixes.py): a call's adapters combined exactly
(``cat``: A stacked, each scale folded into its B block) into one native adapter after the set's
first call, within ``mix_cache_mb``.

Tolerances, on the tiny llama2 (f32 weights, f32 KV, so the rounding left is the
combination's), relative (Frobenius) on the logits, against the adapters applied one by one:
f16 adapters, 2e-3 of the mix's own change of the logits (f16 rounding, 2^-11 of each value: of
the B blocks with a scale folded in, and of B's input, which llama.cpp's f16 products round or
not by the rank); f32 adapters (combined in f32), 1e-5: the same products summed in another order.
The combined factors themselves: exactly the parts' where the adapters share one scale.
Against PEFT with every adapter active: tests/test_mix_adapters.py, every architecture, both paths.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from adapters import all_linear, make_peft_adapter
from tiny_models import TOKENS, rel_err

from edge_lora import Runtime
from edge_lora.lora.adapter import read_gguf_lora
from edge_lora.runtime.mixes import MixCache, MixPart, combined_tensors
from edge_lora.runtime.registry import AdapterSet
from edge_lora_convert import convert

MIX = {"a": 0.5, "b": -1.5, "c": 1.0}


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    t = tiny("llama2")
    d = tmp_path_factory.mktemp("mixes")
    out = {}
    for i, (name, r) in enumerate((("a", 4), ("b", 8), ("c", 16))):
        make_peft_adapter(t.model, d / name, dict(r=r, lora_alpha=2 * r, **all_linear("llama2")), seed=40 + i)
        for outtype in ("f16", "f32"):
            out[name, outtype] = d / f"{name}-{outtype}.gguf"
            convert(d / name, base=t.base_path, out=out[name, outtype], outtype=outtype)
    return t.base_path, out


def _runtime(files, outtype="f16", **kw) -> Runtime:
    base, paths = files
    rt = Runtime(base, n_ctx=128, kv_type="f32", **kw)
    for name in "abc":
        rt.load_adapter(name, paths[name, outtype])
    return rt


def MIX_KEY(rt: Runtime) -> tuple:
    return tuple((n, rt.adapters[n].uid, s) for n, s in sorted(MIX.items()))


SAME = {"a": 1.0, "b": 1.0, "c": 1.0}  # alpha = 2r for each: one effective scale, 2.0


@pytest.mark.parametrize("outtype, mix, tol", [("f16", MIX, None), ("f16", SAME, None), ("f32", MIX, 1e-5)])
def test_combined_equals_the_adapters_one_by_one(files, outtype, mix, tol):
    with _runtime(files, outtype, mix_cache_mb=0) as rt:
        base = rt.logits(TOKENS)
        separate = rt.logits(TOKENS, mix)
        text = rt.complete("tok1 tok2", mix, max_tokens=16, temperature=0.0).tokens
        assert not rt.prepare_mix(mix) and rt.mixes.combined() == []  # mix_cache_mb=0: never combined
    with _runtime(files, outtype) as rt:
        assert rt.prepare_mix(mix)
        combined = rt.logits(TOKENS, mix)
        assert rt.mixes.hits == 1  # the call ran the combination
        assert rt.complete("tok1 tok2", mix, max_tokens=16, temperature=0.0).tokens == text
        (key,) = rt.mixes.combined()
        assert [(n, s) for n, _, s in key] == sorted(mix.items())
    err, effect = rel_err(combined, separate), rel_err(separate, base)
    print(f"combined / one by one ({outtype}, {mix}): {err:.1e}; the mix's effect {effect:.2f}")
    assert effect > 0.05
    assert err <= (tol if tol is not None else 2e-3 * effect)


def test_built_after_the_first_call_and_counted_in_memory(files):
    with _runtime(files) as rt:
        first = rt.logits(TOKENS, {"a": 1.0, "b": 1.0})  # one by one; the build starts
        rt.mixes.wait()
        (key,) = rt.mixes.combined()
        assert [n for n, _, _ in key] == ["a", "b"]
        used = rt.mixes.bytes_used
        sizes = sum(i.size_bytes for n, i in rt.adapters.items() if n in "ab")
        assert 0.9 * sizes < used < 1.1 * sizes  # the f16 factors of both, once more
        assert rt.memory().mixes == used
        assert rt.mixes.hits == 0  # the first call ran the adapters one by one
        assert rel_err(rt.logits(TOKENS, {"a": 1.0, "b": 1.0}), first) <= 2e-3 * rel_err(first, rt.logits(TOKENS))
        assert rt.mixes.hits == 1
        rt.logits(TOKENS, {"b": 1.0, "a": 1.0})  # the same set, names in another order, hits it
        assert rt.mixes.hits == 2 and rt.mixes.combined() == [key] and rt.mixes.refused() == {}
        assert not rt.prepare_mix({"a": 1.0})  # one adapter: nothing to combine
        assert not rt.prepare_mix({"a": 1.0, "b": 0.0})  # scale 0 drops b


def test_the_memory_bound_evicts_and_refuses(files):
    base, paths = files
    one_mix = sum(paths[n, "f16"].stat().st_size for n in "ab") / 2**20
    with _runtime(files, mix_cache_mb=one_mix * 1.2) as rt:
        assert rt.prepare_mix({"a": 1.0, "b": 1.0})
        assert rt.prepare_mix({"a": 1.0, "b": 2.0})  # another scale: another combination
        (key,) = rt.mixes.combined()  # the first was dropped
        assert key[1][2] == 2.0 and rt.mixes.bytes_used <= one_mix * 1.2 * 2**20
        assert not rt.prepare_mix(MIX)  # c is rank 16: a+b+c is larger than the whole bound
        (reason,) = rt.mixes.refused().values()
        assert "larger than the mix cache" in reason and "mix_cache_mb" in reason
        assert MIX_KEY(rt) not in rt.mixes.combined() and rt.logits(TOKENS, MIX).shape[0] == len(TOKENS)


def test_unloading_an_adapter_drops_its_combinations_after_the_calls_using_them(files):
    with _runtime(files) as rt:
        assert rt.prepare_mix({"a": 1.0, "b": 1.0}) and rt.prepare_mix({"a": 1.0, "c": 1.0})
        want = rt.complete("tok1", {"a": 1.0, "b": 1.0}, max_tokens=12, temperature=0.0).tokens
        stream = rt.stream("tok1", {"a": 1.0, "b": 1.0}, max_tokens=12, temperature=0.0)
        pieces = iter(stream)
        next(pieces)
        rt.unload_adapter("b")  # a call is running with a+b's combination: it finishes with it
        list(pieces)
        assert stream.result.tokens == want
        assert [[n for n, _, _ in k] for k in rt.mixes.combined()] == [["a", "c"]]  # a+b freed with b
        sizes = sum(rt.adapters[n].size_bytes for n in "ac")
        assert 0.9 * sizes < rt.mixes.bytes_used < 1.1 * sizes
        rt.unload_adapter("c")
        assert rt.mixes.combined() == [] and rt.memory().mixes == 0
        assert rt.logits(TOKENS, {"a": 1.0}).shape[0] == len(TOKENS)


def test_calls_from_many_threads_while_sets_are_combined(files):
    """Calls under several mixes at once (each set's first call starts its build) give the
    logits of the one-by-one path within the combination's rounding."""
    sets = [{"a": 1.0, "b": 1.0}, {"a": 1.0, "c": 0.5}, {"b": -1.0, "c": 1.0}, MIX]
    with _runtime(files, mix_cache_mb=0) as rt:
        want = [rt.logits(TOKENS, s) for s in sets]
        tols = [2e-3 * rel_err(w, rt.logits(TOKENS)) for w in want]
    errors: list[float] = []
    with _runtime(files, n_parallel=2) as rt:
        def work(i: int) -> None:
            for _ in range(3):
                errors.append(rel_err(rt.logits(TOKENS, sets[i % 4]), want[i % 4]) / tols[i % 4])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rt.mixes.wait()
        assert len(rt.mixes.combined()) == 4
        hits = rt.mixes.hits  # how many of the 24 ran a combination depends on the builds' timing
        work(0), work(1), work(2), work(3)
        assert rt.mixes.hits == hits + 12
    assert len(errors) == 36 and max(errors) <= 1.0


def test_an_alora_set_or_a_zero_budget_is_never_combined():
    cache = MixCache(None, "llama", 1 << 20, lambda uid: None, lambda native, uid: None)  # type: ignore[arg-type]
    plain = AdapterSet((("a", 1, 1.0), ("b", 2, 1.0)), ())
    assert cache.eligible(plain)
    assert not cache.eligible(AdapterSet((("a", 1, 1.0), ("b", 2, 1.0)), (), ((), (7, 8))))
    assert not cache.eligible(AdapterSet((("a", 1, 1.0),), ()))
    assert not MixCache(None, "llama", 0, lambda uid: None, lambda native, uid: None).eligible(plain)  # type: ignore[arg-type]


def test_the_factors_of_adapters_sharing_a_scale_are_stacked_unchanged(files):
    base, paths = files
    parts = [MixPart.open(paths[n, "f16"], 1.0) for n in "abc"]  # alpha 2r: effective scale 2 each
    tensors, ref = combined_tensors(parts, np.float16)
    assert ref == 2.0
    got = {t.name: t.data for t in tensors}
    sources = [read_gguf_lora(paths[n, "f16"]) for n in "abc"]
    assert len(got) == 2 * len(sources[0].weights)
    for name in sources[0].weights:
        weights = [s.weights[name] for s in sources]
        assert np.array_equal(got[name + ".lora_a"], np.concatenate([w.a for w in weights]).astype(np.float16))
        assert np.array_equal(got[name + ".lora_b"], np.concatenate([w.b for w in weights], axis=1).astype(np.float16))
    tensors, ref = combined_tensors([MixPart.open(paths["a", "f16"], 0.5), MixPart.open(paths["b", "f16"], -1.5)],
                                    np.float32)
    assert ref == -3.0  # b's: its block as stored, a's times 1 / -3
    name = next(iter(sources[0].weights))
    b = {t.name: t.data for t in tensors}[name + ".lora_b"]
    assert np.array_equal(b[:, 4:], sources[1].weights[name].b)
    assert np.allclose(b[:, :4], sources[0].weights[name].b * (-1 / 3), rtol=1e-6)


def test_a_file_rewritten_after_its_load_is_not_combined(files, tmp_path):
    """llama.cpp holds an adapter as it was loaded: a combination read from a file rewritten
    since would run other weights under the same load id, so the set stays one by one."""
    base, paths = files
    copy = tmp_path / "b.gguf"
    copy.write_bytes(paths["b", "f16"].read_bytes())
    with Runtime(base, n_ctx=128, kv_type="f32") as rt:
        rt.load_adapter("a", paths["a", "f16"])
        rt.load_adapter("b", copy)
        copy.write_bytes(paths["c", "f16"].read_bytes())  # another adapter under the loaded name's file
        assert not rt.prepare_mix({"a": 1.0, "b": 1.0})
        (reason,) = rt.mixes.refused().values()
        assert "b.gguf changed on disk since it was loaded" in reason
        rt.load_adapter("b", copy)  # loaded again: a new set, combined from the file as it is now
        assert rt.prepare_mix({"a": 1.0, "b": 1.0})
