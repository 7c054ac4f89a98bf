"""The public runtime: one base loaded once, any number of adapters, applied per call.

    rt = Runtime("base.gguf", n_ctx=4096)
    rt.load_adapter("sql", "sql.gguf")
    rt.complete("SELECT", adapters={"sql": 1.0}, max_tokens=32).text

Thread safety: every public method may be called from any thread. Calls lease one
of ``n_parallel`` sequences for their duration (more calls wait), whose generation steps
decode batched (:mod:`.batch`); the adapter registry and the snapshot store have their own
locks. See :mod:`edge_lora.runtime.kv` and :mod:`.scheduler`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..families.base_check import read_runnable_base
from .chat import ChatTemplate, template_kwargs_problem
from .._validate import Problems, int_problem, is_int, number_problem
from ..cancel import CancelToken
from ..errors import CancelledError, ContextOverflowError, InvalidRequestError
from .request import Completion, GenerationRequest, SamplingParams, TextStream, Timings
from .grammar import Grammar
from . import reasoning
from .tool_formats import force_grammar, with_tool_calls
from .tools import ToolRequest
from .speculative import DraftCosts, Drafter, PromptLookup, Speculative
from .draft import DraftModel
from .activation import plan
from .decode import check_finite, check_grammar, evaluate, generate
from .memory import MemoryUsage, kv_cache_bytes, resident_bytes
from ..engine.check import ensure_engine_ok
from ..engine.native import ContextParams, NativeAdapter, NativeModel, adapters_key, backends, devices
from ..engine.offload import no_device_problem
from .kv import SnapshotStore
from .mixes import MixCache
from .scheduler import Scheduler, Slot
from .registry import AdapterInfo, AdapterRegistry, AdapterSet

if TYPE_CHECKING:
    from .session import Session

Adapters = Mapping[str, float] | None
log = logging.getLogger(__name__)


class Runtime:
    """A quantized GGUF base loaded once, with hot-swappable LoRA adapters."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_parallel: int = 1,
        n_seq_max: int | None = None,
        n_batch: int = 512,
        kv_type: str = "f16",
        snapshot_mb: float = 256,
        mix_cache_mb: float = 256,
        op_offload: bool = True,
        chat_template: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        speculative: str | Speculative | None = None,
        on_load_progress: Callable[[float], object] | None = None,
    ) -> None:
        """Load ``model_path`` (mmap kept on). ``n_parallel`` calls run at once, each on its own
        sequence with its own ``n_ctx`` KV cache; ``n_seq_max`` sequences share a llama context
        (default: half of them, two contexts with the cores split), whose calls' generation steps
        decode together in one batch (:mod:`.batch`: calls under different adapter sets decode
        apart, taking turns; a call goes to a context running its set when one has room);
        ``snapshot_mb`` bounds the KV snapshots kept to make
        switching back to an earlier adapter set cheap (0 disables them). ``mix_cache_mb`` bounds
        the mixes run as one adapter (:mod:`.mixes`: two or more adapters in a call combined
        exactly into one, after the set's first call; 0 applies them one by one always).

        ``on_load_progress(fraction)`` is called from this thread while llama.cpp loads the model
        (0.0 to 1.0, from its own progress reports); returning False cancels the load
        (:class:`CancelledError`). Raises :class:`GGUFFileError` for a bad file,
        :class:`EngineBuildError` when the native build cannot run on this machine.

        ``n_gpu_layers`` (0: none, -1: all) needs a GPU device llama.cpp can use: with none, an
        :class:`InvalidRequestError` says why (a CPU-only engine; a software Vulkan device
        skipped), never a silent CPU run. ``op_offload`` (llama.cpp's, on by default) sends the
        products of large batches (32 tokens and more) to the GPU even for layers kept on the CPU;
        off, a partly offloaded model computes those layers where they are.

        ``chat_template`` (Jinja text) replaces the base's own template, or the fallback of a base
        without one (llama.cpp's ``--chat-template-file``): for adapters trained with another
        template than the base ships. Raises :class:`InvalidRequestError` when it does not compile.
        ``template_kwargs``: chat-template variables every chat call gets by default
        (llama.cpp's ``--chat-template-kwargs``); an adapter's own defaults and the call's win.

        ``speculative`` (``"ngram"`` or a :class:`~.speculative.Speculative`): speculative decoding
        by prompt lookup, or with a draft model (``Speculative(model="draft.gguf")``: loaded here,
        refused with :class:`InvalidRequestError` when its vocabulary is not the base's; it runs
        without adapters, :mod:`.draft`), the same tokens as without it (:mod:`.speculative`); off
        on a recurrent or hybrid model, whose state cannot drop a rejected draft."""
        problems = Problems()
        for name, v, lo in (("n_ctx", n_ctx, 16), ("n_parallel", n_parallel, 1), ("n_batch", n_batch, 1)):
            problems.add(int_problem(name, v, lo=lo), param=name)
        if n_seq_max is not None:
            problems.add(int_problem("n_seq_max", n_seq_max, lo=1), param="n_seq_max")
        if kv_type not in ("f16", "f32", "q8_0"):
            problems.add(f"kv_type must be f16, f32 or q8_0, got {kv_type!r}", param="kv_type")
        if n_threads is not None:
            problems.add(int_problem("n_threads", n_threads, lo=1), param="n_threads")
        problems.add(number_problem("snapshot_mb", snapshot_mb, lo=0), param="snapshot_mb")
        problems.add(number_problem("mix_cache_mb", mix_cache_mb, lo=0), param="mix_cache_mb")
        problems.add(int_problem("n_gpu_layers", n_gpu_layers, lo=-1), param="n_gpu_layers")
        if not isinstance(op_offload, bool):
            problems.add(f"op_offload must be True or False, got {op_offload!r}", param="op_offload")
        if chat_template is not None and not (isinstance(chat_template, str) and chat_template.strip()):
            problems.add("chat_template must be non-empty Jinja text", param="chat_template")
        problems.add(template_kwargs_problem(template_kwargs or {}), param="template_kwargs")
        problems.raise_if_any(InvalidRequestError, "invalid Runtime options")
        self.speculative = Speculative.of(speculative)
        self._draft_costs = DraftCosts()  # measured by the calls themselves
        self._template_kwargs = dict(template_kwargs or {})
        self.base_info = read_runnable_base(model_path)
        self.model_path = Path(model_path)
        ensure_engine_ok()  # once per native build and CPU: a child process runs the smoke test
        no_device = no_device_problem(n_gpu_layers, backends(), devices())
        if no_device:
            raise InvalidRequestError(no_device, param="n_gpu_layers")
        self._model = NativeModel(str(self.model_path), n_gpu_layers=n_gpu_layers, on_progress=on_load_progress)
        # llama.cpp's worker threads spin while they wait: contexts running at once must not
        # oversubscribe the cores, so by default they share them
        # by default two contexts share the calls (measured, bench_runtime 7: against one context of all
        # of them, two let two adapter sets run without taking turns, and split cores beat one
        # context's threads on a CPU)
        n_seq = min(n_seq_max or -(-n_parallel // 2), n_parallel)
        n_contexts = -(-n_parallel // n_seq)
        threads = n_threads or max(1, (os.cpu_count() or 1) // n_contexts)
        params = ContextParams(n_ctx=n_ctx, n_batch=n_batch, n_threads=threads, kv_type=kv_type, op_offload=op_offload)
        self._params = params
        store = SnapshotStore(int(snapshot_mb * 1024 * 1024)) if snapshot_mb > 0 else None
        try:
            self._pool = Scheduler(self._model, params, n_parallel, store, n_seq)
        except Exception:
            self._model.close()
            raise
        self._draft: DraftModel | None = None
        if self.speculative is not None and self.speculative.method == "draft_model" and not self._model.can_rewind:
            log.warning("speculative decoding is off: a recurrent or hybrid base cannot drop a rejected draft; "
                        "the draft model %s is not loaded", self.speculative.model)
        elif self.speculative is not None and self.speculative.method == "draft_model":
            try:
                self._draft = DraftModel(self.speculative.model, self._model, n_ctx=n_ctx, n_threads=threads,  # type: ignore[arg-type]
                                         n_gpu_layers=n_gpu_layers, kv_type=kv_type, n_parallel=n_parallel)
            except Exception:
                self._pool.close(0)
                self._model.close()
                raise
        self._registry = AdapterRegistry(self._model, self.base_info, self._detach_adapter)
        self.mixes = MixCache(self._model, self.base_info.architecture, int(mix_cache_mb * 1024 * 1024),
                              self._registry.file_of, self._pool.detach)
        try:
            self._template = ChatTemplate(
                chat_template or self._model.chat_template(),
                bos_token=self._model.token_text(self._model.bos) if self._model.bos >= 0 else "",
                eos_token=self._model.token_text(self._model.eos) if self._model.eos >= 0 else "",
                is_special_token=self._model.is_special_token,
            )
        except InvalidRequestError:
            self._pool.close(0)
            self._model.close()
            raise
        if chat_template:
            self._template.name = "given"
        self._closed = False

    # -- adapters --------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | os.PathLike[str], scale: float = 1.0, *,
                     template_kwargs: Mapping[str, Any] | None = None) -> AdapterInfo:
        """Load a GGUF LoRA adapter under ``name`` (checked against the base in Python first).
        ``scale`` is its default when a call names it without one; ``template_kwargs`` are the
        chat-template variables a call with it gets unless the call gives them (an adapter
        trained with ``enable_thinking=False``).

        Loading a name again replaces that adapter; calls in flight finish with the old one.
        """
        self._check_open()
        return self._registry.load(name, path, scale, template_kwargs)

    def unload_adapter(self, name: str) -> None:
        """Unload an adapter; it is freed when the last call using it ends."""
        self._registry.unload(name)

    def prepare_mix(self, adapters: Adapters) -> bool:
        """Combine a mix of adapters into one now (:mod:`.mixes`; otherwise done in the background
        after its first call), waiting for it; True when calls with ``adapters`` then run it as one
        adapter, False when they apply its adapters one by one (fewer than two, an aLoRA among
        them, ``mix_cache_mb`` too small: ``Runtime.mixes.refused()`` says why)."""
        self._check_open()
        aset = self._registry.acquire(adapters)
        try:
            return self.mixes.build(aset)
        finally:
            self._registry.release(aset)

    def check_adapters(self, adapters: Adapters) -> None:
        """Raise :class:`UnknownAdapterError` / :class:`InvalidRequestError` for a bad adapter mix."""
        self._registry.check(adapters)

    @property
    def adapters(self) -> dict[str, AdapterInfo]:
        """Loaded adapters: name -> path, alpha, ranks, targets, size, default scale, aLoRA invocation tokens."""
        return self._registry.infos()

    # -- tokens ------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._pool.n_ctx

    @property
    def n_parallel(self) -> int:
        return self._pool.size

    @property
    def busy_contexts(self) -> int:
        """Sequences (of ``n_parallel``) leased by calls in flight right now."""
        return self._pool.busy

    @property
    def batching(self) -> dict[str, int]:
        """Batched decoding so far: ``decodes`` run over shared contexts and the generation
        ``steps`` they held (their ratio is the mean batch)."""
        bs = self._pool.batchers
        return {"decodes": sum(b.decodes for b in bs), "steps": sum(b.steps for b in bs)}

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def chat_template(self) -> str:
        """``"given"`` for the ``chat_template`` argument, ``"model"`` when the base carries its own
        template, else the fallback used (``gemma``, ``llama3``, ``chatml`` or ``plain``; see
        :mod:`edge_lora.runtime.chat`)."""
        return self._template.name

    @property
    def chat_template_source(self) -> str:
        """The Jinja text of the chat template in use (given, the base's own, or the fallback)."""
        return self._template.source

    @property
    def thinks(self) -> bool:
        """Whether the chat template in use writes thoughts in ``<think>`` tags (:mod:`.reasoning`)."""
        return reasoning.thinks(self._template.source)

    @property
    def tool_layout(self) -> str | None:
        """The tool-call layout of the chat template in use (:mod:`edge_lora.runtime.tool_formats`),
        or None when its layout is not one edge-lora parses (tools are then refused)."""
        try:
            return self._template.tool_format.name
        except InvalidRequestError:
            return None

    def tokenize(self, text: str, *, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of ``text`` (BOS added when the model wants one; special tokens parsed)."""
        self._check_open()
        if not isinstance(text, str):
            raise InvalidRequestError(f"text must be a string, got {type(text).__name__}")
        return self._model.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        self._check_open()
        self._check_ids(ids)
        return b"".join(self._model.token_piece(int(t)) for t in ids).decode("utf-8", errors="replace")

    # -- evaluation --------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int], adapters: Adapters = None, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Logits ``[n_tokens, n_vocab]`` of ``token_ids`` evaluated from scratch under ``adapters``
        (an aLoRA among them from its invocation on, as in generation).

        Raises :class:`NonFiniteLogitsError` rather than return NaN or infinite logits,
        :class:`CancelledError` when ``cancel`` fires."""
        self._check_ids(token_ids)
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidRequestError("token_ids is empty")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit the context of {self.n_ctx}",
                                       needed=len(ids), n_ctx=self.n_ctx)
        self._registry.check(adapters, ids)
        with self._call(adapters, cancel) as (slot, aset):
            slot.kv.clear()
            out = evaluate(slot, plan(aset, ids), ids, 0, all_logits=True, cancel=cancel)
            check_finite(out, slot.kv, aset, f"over {len(ids)} tokens")
            return out

    def complete(self, prompt: str, adapters: Adapters = None, *, cancel: CancelToken | None = None,
                 **options: Any) -> Completion:
        """Complete raw text. Options: max_tokens, temperature, top_p, top_k, min_p,
        repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty, seed, stop,
        ``logit_bias`` ({token id: bias}), ``logprobs`` (k: each token's log-probability and the k
        most likely, in ``Completion.logprobs``); ``json_schema`` (a dict or JSON text: the
        output matches it) or ``grammar`` (GBNF text), enforced token by token by llama.cpp's
        grammar sampler (:mod:`edge_lora.runtime.grammar`). ``cancel``: a :class:`CancelToken` another
        thread may fire (the result then has ``finish_reason == "cancelled"``)."""
        return self.stream(prompt, adapters, cancel=cancel, **options).consume()

    def stream(self, prompt: str, adapters: Adapters = None, *, cancel: CancelToken | None = None,
               **options: Any) -> TextStream:
        """Like :meth:`complete`, as an iterator of text pieces (``.result`` at the end)."""
        return self.start(GenerationRequest.of(prompt=prompt, adapters=adapters, cancel=cancel, **options))

    def chat(self, messages: Sequence[Mapping[str, str]], adapters: Adapters = None, *,
             cancel: CancelToken | None = None, **options: Any) -> Completion:
        """Answer a conversation, formatted with the base's chat template (OpenAI's message forms:
        :func:`~edge_lora.runtime.chat.check_messages`). Options as :meth:`complete`, and ``tools``,
        ``tool_choice``, ``parallel_tool_calls`` (:mod:`edge_lora.runtime.tools`: the calls come in
        ``Completion.tool_calls``), ``template_kwargs`` (extra template variables)."""
        return self.chat_stream(messages, adapters, cancel=cancel, **options).consume()

    def chat_stream(self, messages: Sequence[Mapping[str, str]], adapters: Adapters = None, *,
                    cancel: CancelToken | None = None, **options: Any) -> TextStream:
        """Like :meth:`chat`, as an iterator of text pieces (``.result`` at the end)."""
        return self.start(GenerationRequest.of(messages=messages, adapters=adapters, cancel=cancel, **options))

    def start(self, request: GenerationRequest) -> TextStream:
        """Run ``request`` (what :meth:`stream` and :meth:`chat_stream` build): everything is
        checked now (adapters, options, tools, the prompt's fit in the context), then the returned
        stream generates lazily, in whichever thread iterates it. With tools offered, the stream
        yields the answer's content only and its result carries the calls (:mod:`.tool_formats`)."""
        self.check_adapters(request.adapters)
        params, fmt = request.params, None
        if request.messages is not None:
            text = self._render(request.messages, request.adapters, request.tools, request.template_kwargs)
            ids = self._prompt_tokens(text)
            if request.tools is not None and request.tools.offered:
                fmt = self._template.tool_format
                if request.tools.forced:
                    params = replace(params, grammar=Grammar(*force_grammar(fmt, request.tools), source="tools"))
        else:
            ids = self.tokenize(request.prompt)
        self._check_fits(ids)
        self._registry.check(request.adapters, ids)  # an aLoRA's invocation must be in the prompt
        if params.grammar is not None:
            check_grammar(self._model, params.grammar)
        bad = [t for t, _b in params.logit_bias if t >= self.n_vocab]
        if bad:
            raise InvalidRequestError(f"logit_bias names token ids beyond the vocabulary ({self.n_vocab}): {bad[:5]}",
                                      param="logit_bias")
        thinking = request.messages is not None and reasoning.thinks(self._template.source)
        tags = (reasoning.OPEN, reasoning.CLOSE) if thinking else ()
        keep = frozenset(t for tag in (*(fmt.preserve if fmt else ()), *tags) for t in self._special_ids(tag))
        gen = self._run(ids, request.adapters, params, request.cancel, keep)
        if thinking:
            gen = reasoning.with_thoughts(gen, reasoning.opened_by(text))
        if fmt is not None:
            offered = request.tools.offered  # type: ignore[union-attr]
            gen = with_tool_calls(gen, fmt, frozenset(t.name for t in offered), request.tools.parallel)  # type: ignore[union-attr]
        return TextStream(gen)

    def memory(self) -> MemoryUsage:
        """Bytes held now: the mapped model (and its resident part), KV per context, adapters,
        snapshots (see :class:`MemoryUsage`)."""
        self._check_open()
        return MemoryUsage(
            model_mapped=self.base_info.tensor_bytes(),
            model_resident=resident_bytes(self.model_path),
            kv_per_context=kv_cache_bytes(self.base_info, self.n_ctx, self._params.kv_type),
            contexts=self._pool.size,
            adapters=sum(a.size_bytes for a in self.adapters.values()),
            snapshots=self.snapshots.bytes_used if self.snapshots else 0,
            mixes=self.mixes.bytes_used,
            draft=self._draft.bytes_used if self._draft is not None else 0,
        )

    def chat_tokens(self, messages: Sequence[Mapping[str, Any]], adapters: Adapters = None, *,
                    tools: ToolRequest | None = None, template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
        """The prompt tokens a chat call with these arguments runs on, ready for the assistant's
        turn: ``tools`` shown to the model as :meth:`ChatTemplate.render` does, the template's
        variables those of :meth:`chat` (this runtime's defaults, then the adapters', then
        ``template_kwargs``)."""
        self._check_open()
        self.check_adapters(adapters)
        return self._prompt_tokens(self._render(messages, adapters, tools, template_kwargs))

    def _render(self, messages: Sequence[Mapping[str, Any]], adapters: Adapters, tools: ToolRequest | None,
                template_kwargs: Mapping[str, Any] | None) -> str:
        kwargs = {**self._template_kwargs, **self._registry.template_kwargs(adapters, template_kwargs)}
        return self._template.render(messages, tools=tools, template_kwargs=kwargs)

    def _special_ids(self, text: str) -> list[int]:
        """The token of ``text`` when the vocabulary has it as one special token, else none."""
        ids = self._model.tokenize(text, add_special=False, parse_special=True)
        return ids if len(ids) == 1 and self._model.is_special_token(text) else []

    def _prompt_tokens(self, text: str) -> list[int]:
        self._check_open()
        ids = self._model.tokenize(text, add_special=False, parse_special=True)
        if self._model.add_bos and self._model.bos >= 0 and (not ids or ids[0] != self._model.bos):
            ids.insert(0, self._model.bos)
        return ids

    def session(self, adapters: Adapters = None, messages: Sequence[Mapping[str, str]] = (), **options: Any) -> Session:
        """A multi-turn conversation that keeps its KV state between turns."""
        from .session import Session

        return Session(self, adapters, messages, options)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Free every native resource (contexts, adapters, then the model). Safe while other
        threads generate: their calls stop at the next token (``finish_reason == "cancelled"``)
        and close waits up to ``timeout`` s for them. A context still held after that (a stream
        left unconsumed) is never freed under it: the model and adapters are then kept
        (logged), not freed, so nothing can crash."""
        if self._closed:
            return
        self._closed = True
        if not self._pool.close(timeout):
            log.warning("Runtime.close: a call still holds a context after %.0f s; keeping the model loaded", timeout)
            return
        self.mixes.close()
        self._registry.close()
        if self._draft is not None:
            self._draft.close()
        self._model.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------
    @property
    def snapshots(self) -> SnapshotStore | None:
        return self._pool.snapshots

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidRequestError("this Runtime is closed")

    def _check_fits(self, ids: Sequence[int]) -> None:
        """Refuse at the call (not at the first piece) a prompt that leaves no room to generate."""
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"the prompt has {len(ids)} tokens; the context holds {self.n_ctx} (leave room for at least one "
                "generated token: shorten the prompt or raise n_ctx)",
                needed=len(ids) + 1,
                n_ctx=self.n_ctx,
            )

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [t for t in ids if not is_int(t) or not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequestError(f"token ids must be integers in [0, {self.n_vocab}); bad: {bad[:5]}")

    @contextmanager
    def _call(self, adapters: Adapters, cancel: CancelToken | None = None) -> Iterator[tuple[Slot, AdapterSet]]:
        if self._closed:
            raise InvalidRequestError("this Runtime is closed")
        aset = self.mixes.use(self._registry.acquire(adapters))
        try:
            with self._pool.lease(cancel, adapters_key(aset.run_with)) as slot:
                yield slot, aset
        finally:
            self.mixes.release(aset)
            self._registry.release(aset)

    def _drafter(self, prompt: list[int], cancel: CancelToken | None) -> Drafter | None:
        """This call's drafts (None without speculative decoding, or on a model that cannot rewind)."""
        spec = self.speculative
        if spec is None or not self._model.can_rewind:
            return None
        if self._draft is not None:
            return self._draft.drafter(spec, prompt, self._draft_costs, cancel)
        return PromptLookup(spec, prompt, self._draft_costs)

    def _detach_adapter(self, native: NativeAdapter, uid: int) -> None:
        """Before an adapter is freed: its combinations dropped, it taken off the idle contexts."""
        self.mixes.drop_adapter(uid)
        self._pool.detach(native, uid)

    def _run(self, ids: list[int], adapters: Adapters, params: SamplingParams,
             cancel: CancelToken | None = None, keep_special: frozenset[int] = frozenset()) -> Iterator[str]:
        t0 = time.perf_counter()
        try:
            with self._call(adapters, cancel) as (slot, aset):
                drafter = self._drafter(ids, cancel)
                try:
                    return (yield from generate(self._pool, slot, aset, ids, params, cancel=cancel,
                                                keep_special=keep_special, drafter=drafter))
                finally:
                    if drafter is not None:
                        drafter.close()
        except CancelledError:  # cancelled while waiting for a context: nothing was evaluated
            t = (time.perf_counter() - t0) * 1000
            return Completion("", [], "cancelled", len(ids), 0, 0, {}, Timings(t, t, 0.0, t))
