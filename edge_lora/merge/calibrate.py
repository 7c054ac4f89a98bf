"""Calibration inputs for GPTQ requantization (:mod:`.gptq`): the second moments of the
inputs each touched weight sees while the base runs *with the adapters hot*, i.e. as
the merged model will run.

The tokens come from the user's text (``calibration``), or, by default, from the hot
model itself answering a fixed set of varied requests through the base's chat template
(data-free: what the adapted model says is what its merged weights must keep saying).
DoRA's magnitudes cannot run hot; their LoRA part does.

A second moment is (in, in) float64 per distinct input: an 8B model's would not all fit
in memory, so :meth:`Calibrator.stats` gathers them for a group of weights at a time
(one pass over the tokens per group).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InvalidRequestError
from ..formats.gguf_file import GGUFInfo
from .gptq import upper_cholesky_of_inverse
from ..lora.adapter import LoraSource, write_gguf_lora

#: the default self-calibration requests: varied tasks, formats and languages, none of them
#: edge-lora's demo tasks
DEFAULT_REQUESTS = (
    "Write a short paragraph about the sea.",
    "Explain how a bicycle works, step by step.",
    "List five animals and where they live.",
    "Write a Python function that returns the largest of three numbers.",
    "Tell me a story about a lighthouse keeper.",
    "What should I pack for a weekend of hiking?",
    "Describe the city you would most like to visit.",
    "Give me a recipe for a simple soup.",
    "¿Cuál es la capital de Argentina y qué se puede ver allí?",
    "Summarize the water cycle for a ten-year-old.",
    "Write a polite email declining a meeting invitation.",
    "Compare trains and planes for a 500 km trip.",
)

#: beginnings the hot model continues as plain text (no chat template), for inputs beyond chat turns
DEFAULT_STARTS = ("The", "In 1887, the", "def main():", "Dear Sir or Madam,", "Il était une fois",
                  "The results show that", "import numpy as np", "Once upon a time")

#: tokens generated per default request; the cap on calibration tokens taken from a text
GEN_TOKENS = 96
MAX_TEXT_TOKENS = 4096
MIN_TOKENS = 64
#: tokens per llama.cpp decode while gathering (the inputs of one decode are held until flushed)
CHUNK = 256
#: second moments gathered at once: at most this many bytes of (in, in) float64 arrays
GROUP_BYTES = 4 << 30


def layer_groups(names: Sequence[str], n_in: dict[str, int], budget: int = GROUP_BYTES) -> list[list[str]]:
    """``names`` (in file order) cut into consecutive groups whose second moments fit ``budget``
    (counted as if no two weights shared an input)."""
    groups: list[list[str]] = [[]]
    used = 0
    for n in names:
        size = n_in[n] ** 2 * 8
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(n)
        used += size
    return [g for g in groups if g]


class Calibrator:
    """Calibration tokens for ``sources`` hot over the base ``info``, and the inputs' second
    moments for any group of its weights. Close it (or use ``with``) to free the model."""

    def __init__(self, info: GGUFInfo, sources: Sequence[LoraSource], *, text: str | None = None,
                 n_threads: int | None = None, seed: int = 0) -> None:
        from ..engine.native import NativeAdapter, NativeModel
        from ..runtime.runtime import Runtime

        self._tmp = tempfile.TemporaryDirectory(prefix="edge-lora-calib-")
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        paths = []
        for i, s in enumerate(sources):
            paths.append(Path(self._tmp.name) / f"a{i}.gguf")
            write_gguf_lora(s, paths[-1])
        with Runtime(info.path, n_ctx=2048, n_threads=n_threads) as rt:
            for i, p in enumerate(paths):
                rt.load_adapter(f"a{i}", p)
            if text is not None:
                # tokenizing is superlinear in the text's length: cut it first (a token is rarely
                # more than 16 bytes), then keep MAX_TEXT_TOKENS
                self.tokens = rt.tokenize(text[:MAX_TEXT_TOKENS * 16])[:MAX_TEXT_TOKENS]
                self.source = "the given text"
                if len(self.tokens) < MIN_TOKENS:
                    raise InvalidRequestError(
                        f"the calibration text has {len(self.tokens)} tokens; GPTQ needs at least {MIN_TOKENS} "
                        "(pass more text, or leave --calibration out to use the hot model's own answers)")
            else:
                hot = {f"a{i}": 1.0 for i in range(len(paths))}
                self.tokens = [t for s in _self_generated(rt, hot, seed) for t in s]
                self.source = "the hot model's answers to the default requests"
        self._model = NativeModel(str(info.path))
        self._adapters = [NativeAdapter(self._model, str(p)) for p in paths]
        self._factors: list[tuple[np.ndarray, np.ndarray]] = []
        self._group: tuple[set[str], dict[str, np.ndarray]] = (set(), {})

    def stats(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """``{name: H}`` for ``names``: ``H`` (in, in) float64, the sum of ``x x^T`` over the
        calibration tokens' inputs to that weight; weights reading the same input share one array."""
        from ..engine.native import ContextParams, InputStats, NativeContext, NativeError

        stats = InputStats(list(names))
        window = max(1, min(len(self.tokens), 2048, self._model.n_ctx_train or 2048))
        ctx = NativeContext(self._model, ContextParams(n_ctx=window, n_batch=CHUNK, n_threads=self.n_threads,
                                                       input_stats=stats))
        try:
            ctx.set_adapters([(a, 1.0) for a in self._adapters])
            for w0 in range(0, len(self.tokens), window):  # the tokens as one text, in windows
                ctx.clear()
                part = self.tokens[w0:w0 + window]
                for i in range(0, len(part), CHUNK):
                    try:
                        ctx.decode(part[i:i + CHUNK], i, all_rows=True)
                    except NativeError:
                        stats.flush()  # an exception the callback caught is the real cause
                        raise
                    stats.flush()
        finally:
            ctx.close()
        return stats.h

    def factor(self, h: np.ndarray) -> np.ndarray:
        """GPTQ's ``upper_cholesky_of_inverse(h)``, once per distinct array (Q, K, V share one)."""
        for cached, u in self._factors:
            if cached is h:
                return u
        u = upper_cholesky_of_inverse(h)
        self._factors = self._factors[-7:] + [(h, u)]
        return u

    def h_for(self, name: str, groups: Sequence[Sequence[str]]) -> np.ndarray | None:
        """``H`` of weight ``name``, gathering the whole group of ``groups`` it is in when it is
        not the current one (the previous group's arrays are released)."""
        names, hs = self._group
        if name not in names:
            group = next((g for g in groups if name in g), [name])
            self._factors = []
            self._group = (set(group), {})
            self._group = (set(group), self.stats(group))
            names, hs = self._group
        return hs.get(name)

    def close(self) -> None:
        for a in self._adapters:
            a.close()
        self._adapters = []
        if self._model is not None:
            self._model.close()
            self._model = None
        self._tmp.cleanup()

    def __enter__(self) -> Calibrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _self_generated(rt, hot: dict[str, float], seed: int) -> list[list[int]]:
    seqs = []
    for i, request in enumerate(DEFAULT_REQUESTS):
        messages = [{"role": "user", "content": request}]
        answer = rt.chat(messages, hot, temperature=0.8, seed=seed + i, max_tokens=GEN_TOKENS)
        seqs.append(rt.chat_tokens(messages) + rt.tokenize(answer.text, add_bos=False, special=False))
    for i, start in enumerate(DEFAULT_STARTS):
        text = rt.complete(start, hot, temperature=1.0, seed=seed + 100 + i, max_tokens=GEN_TOKENS).text
        seqs.append(rt.tokenize(start + text))
    return seqs
