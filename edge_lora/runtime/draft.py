"""Speculative decoding with a draft model: a smaller GGUF model of the same vocabulary proposes
the next tokens greedily, and the target (with the call's adapters) keeps those its own sampler
picks (:mod:`.speculative`: the acceptance rule, exact for any draft that is a function of the
history, as a greedy draft is). The draft model runs with no adapters; each call leases one of its
contexts, which keeps the tokens it evaluated so that the next call's shared prefix is not
evaluated again (llama.cpp's ``--model-draft``; vLLM's ``draft_model``).

The vocabularies must match as llama.cpp's ``common_speculative_are_compatible`` requires: the same
tokenizer type, BOS and EOS handling, sizes within 128 tokens and the same token texts from id 5
on; a draft token beyond the target's vocabulary is never proposed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from ..cancel import CancelToken
from ..engine.native import ContextParams, NativeContext, NativeModel, vocab_summary
from ..errors import CancelledError, InvalidRequestError
from ..families.base_check import read_runnable_base
from .kv import KVState, common_prefix
from .memory import kv_cache_bytes
from .speculative import DraftCosts, DraftTally, Speculative, moving_average

#: llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE and SPEC_VOCAB_CHECK_START_TOKEN_ID (common/speculative.cpp)
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_TOKEN_ID = 5


def draft_vocab_problems(target: NativeModel, draft: NativeModel) -> list[str]:
    """Why ``draft`` cannot draft for ``target`` (llama.cpp's checks, all of them reported), [] when it can."""
    t, d = vocab_summary(target), vocab_summary(draft)
    problems = []
    if t["type"] != d["type"]:
        problems.append(f"tokenizer type {d['type']} where the target's is {t['type']}")
    for end in ("bos", "eos"):
        add = f"add_{end}"
        if t[add] != d[add] or (t[add] and t[end] != d[end]):
            problems.append(f"{end.upper()} token {d[end]} (added: {d[add]}) where the target's is {t[end]} (added: {t[add]})")
    diff = abs(target.n_vocab - draft.n_vocab)
    if diff > VOCAB_MAX_SIZE_DIFFERENCE:
        problems.append(f"{draft.n_vocab} tokens where the target has {target.n_vocab} (at most "
                        f"{VOCAB_MAX_SIZE_DIFFERENCE} apart)")
    else:
        differ = [i for i in range(VOCAB_CHECK_START_TOKEN_ID, min(target.n_vocab, draft.n_vocab))
                  if target.token_text(i) != draft.token_text(i)]
        if differ:
            i = differ[0]
            problems.append(f"{len(differ)} token texts differ from the target's, the first id {i}: "
                            f"{draft.token_text(i)!r} where the target has {target.token_text(i)!r}")
    if not draft.can_rewind:
        problems.append("a recurrent or hybrid model, whose state cannot drop a rejected draft")
    return problems


#: the key of the draft's KV segments: it runs without adapters
NO_ADAPTERS: tuple = ()


class DraftModel:
    """The draft model of a Runtime: loaded once, refused with every reason when its vocabulary
    does not match the target's (:class:`InvalidRequestError`), with up to ``n_parallel``
    contexts of ``n_ctx`` tokens made as calls need them. ``ms_per_token``: the measured cost of a
    drafted token (a moving average), which :class:`DraftCosts` weighs against what a draft saves."""

    def __init__(self, path: str | os.PathLike[str], target: NativeModel, *, n_ctx: int, n_threads: int,
                 n_gpu_layers: int, kv_type: str, n_parallel: int) -> None:
        self.info = read_runnable_base(path)  # a bad file: GGUFFileError here, before native code
        self.model = NativeModel(str(path), n_gpu_layers=n_gpu_layers)
        problems = draft_vocab_problems(target, self.model)
        if problems:
            self.model.close()
            raise InvalidRequestError(f"{path} cannot draft for this base", problems, param="speculative")
        self.path = str(path)
        self.n_vocab = min(target.n_vocab, self.model.n_vocab)  # draft only ids the target has
        self._params = ContextParams(n_ctx=n_ctx, n_batch=512, n_threads=n_threads, kv_type=kv_type)
        self._limit = n_parallel
        self._made = 0
        self._free: list[KVState] = []
        self._all: list[KVState] = []
        self._lock = threading.Lock()
        self.ms_per_token: float | None = None

    @property
    def bytes_used(self) -> int:
        """The draft model's tensors (mapped) and the KV of its contexts made so far."""
        return self.info.tensor_bytes() + self._made * kv_cache_bytes(self.info, self._params.n_ctx, self._params.kv_type)

    def drafter(self, spec: Speculative, history: Sequence[int], costs: DraftCosts | None,
                cancel: CancelToken | None = None) -> ModelDrafter:
        """A drafter for one call over ``history`` (its prompt), on the free context whose tokens
        share the longest prefix with it (a new one while fewer than ``n_parallel`` exist).
        :meth:`ModelDrafter.close` gives the context back."""
        with self._lock:
            if self._free:
                kv = max(self._free, key=lambda k: common_prefix(k.tokens, history))
                self._free.remove(kv)
            elif self._made < self._limit:
                self._made += 1
                try:
                    kv = KVState(NativeContext(self.model, self._params))
                except Exception:
                    self._made -= 1
                    raise
                self._all.append(kv)
            else:  # never more calls than n_parallel: the target's scheduler leases one slot each
                raise RuntimeError("more draft leases than the target has sequences")
        return ModelDrafter(self, kv, spec, history, costs, cancel)

    def give_back(self, kv: KVState) -> None:
        with self._lock:
            self._free.append(kv)

    def record(self, ms_per_token: float) -> None:
        self.ms_per_token = moving_average(self.ms_per_token, ms_per_token)

    def close(self) -> None:
        with self._lock:
            for kv in self._all:
                kv.ctx.close()
            self._all.clear()
            self._free.clear()
            self.model.close()


class ModelDrafter(DraftTally):
    """One call's drafts from the draft model (a :class:`.speculative.Drafter`). A draft is the
    draft model's greedy continuation of the history, stopped where its most likely token is less
    likely than ``spec.draft_p_min`` or is an end of generation."""

    def __init__(self, owner: DraftModel, kv: KVState, spec: Speculative, history: Sequence[int],
                 costs: DraftCosts | None, cancel: CancelToken | None) -> None:
        self.owner, self.kv, self.spec, self.costs, self.cancel = owner, kv, spec, costs, cancel
        self.tokens = [int(t) for t in history]

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(int(t) for t in tokens)

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(limit, num_speculative_tokens)`` tokens (fewer where the cost model says
        they would not pay, :meth:`DraftCosts.best_length` with the draft's own cost per token)."""
        k = self.length(limit, self.owner.ms_per_token or 0.0)
        if k <= 0:
            return []
        kv = self.kv
        try:
            # evaluate what the draft's KV lacks of the history (at least its last token, for the logits)
            n = kv.truncate(min(common_prefix(kv.tokens, self.tokens), len(self.tokens) - 1))
            kv.decode(NO_ADAPTERS, self.tokens[n:], cancel=self.cancel if len(self.tokens) - n > 16 else None)
            out: list[int] = []
            t0 = time.perf_counter()
            steps = 0
            while True:
                logits = kv.ctx.last_logits()[: self.owner.n_vocab]
                d = int(np.argmax(logits))
                if self.spec.draft_p_min > 0.0:
                    p = 1.0 / float(np.exp(logits - logits[d]).sum())  # softmax probability of the top token
                    if p < self.spec.draft_p_min:
                        break
                out.append(d)
                if len(out) >= k or self.owner.model.is_eog(d):
                    break
                kv.decode(NO_ADAPTERS, [d])
                steps += 1
            if steps:
                self.owner.record((time.perf_counter() - t0) * 1000 / steps)
            return out
        except CancelledError:  # KVState cleared the draft's KV; the call's loop sees the cancel
            return []

    def close(self) -> None:
        """Give the draft context back (its tokens kept for the next call's prefix)."""
        self.owner.give_back(self.kv)
