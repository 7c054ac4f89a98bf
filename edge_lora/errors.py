"""Typed errors of edge-lora.

The library raises these; only the CLI and the server turn them into messages,
exit codes and HTTP statuses. An error may carry several problems so
that a user sees everything wrong with a file at once.

One class per condition, whichever tool meets it:

=====================================================================  ==========================
condition                                                              class
=====================================================================  ==========================
a file missing, unreadable, not GGUF, truncated or malformed           GGUFFileError
a GGUF file of the wrong kind (an adapter given as the base, a base    GGUFFileError
given as the adapter)
a base whose hyperparameters llama.cpp cannot run                      GGUFFileError
a PEFT/MLX checkpoint missing, malformed or unsupported                CheckpointError
a checkpoint that cannot be converted (every problem listed)           ConversionError
an adapter that does not fit a base (architecture, names, shapes,      IncompatibleAdapterError
non-finite values, types llama.cpp cannot multiply)
an output that exists (without ``--force``), is an input, or is the    OutputExistsError
wrong kind of path
an output that cannot be written there                                 OutputPathError
a bad argument or option, scales that overflow the f16 range           InvalidRequestError
a prompt that does not fit the context                                 ContextOverflowError
an adapter name that is not loaded                                     UnknownAdapterError
logits that turn NaN or infinite while generating                      NonFiniteLogitsError
an optional dependency (an extra) missing                              MissingDependencyError
a call or load cancelled                                               CancelledError
llama.cpp failing at run time (decode, context creation)               NativeError
the native build failing its smoke test on this machine                EngineBuildError
=====================================================================  ==========================
"""

from __future__ import annotations

from collections.abc import Iterable


class EdgeLoraError(Exception):
    """Base class of every error edge-lora raises on purpose."""

    #: exit status the CLI uses for this error
    exit_code: int = 1

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.message = message
        self.problems: list[str] = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{self.message}\n{lines}"


class GGUFFileError(EdgeLoraError):
    """A file is missing, unreadable, truncated or not a GGUF file, or a GGUF file of the wrong
    kind for its place (an adapter where a base goes, or the reverse)."""

    exit_code = 2


class CheckpointError(EdgeLoraError):
    """An adapter checkpoint (PEFT or MLX) is missing, malformed or unsupported."""

    exit_code = 2


class ConversionError(CheckpointError):
    """A checkpoint cannot be converted: every problem found is listed."""


class IncompatibleAdapterError(EdgeLoraError):
    """An adapter does not fit a base model (architecture, names or shapes)."""

    exit_code = 2


class OutputPathError(EdgeLoraError):
    """The output path cannot be used: nothing is written (see :mod:`edge_lora.outputs`)."""

    exit_code = 2


class OutputExistsError(OutputPathError):
    """The output path exists (without overwriting asked for), is one of the inputs, or is the
    wrong kind of path (a folder where a file goes, or the reverse)."""


class MissingDependencyError(EdgeLoraError):
    """An optional dependency (an extra) is needed for this operation."""

    exit_code = 3


class UnknownAdapterError(EdgeLoraError, KeyError):
    """An adapter name that is not loaded; the message lists the loaded ones."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would repr() the message
        return EdgeLoraError.__str__(self)


class InvalidRequestError(EdgeLoraError, ValueError):
    """A bad argument to the runtime (unknown option, out-of-range value). ``param`` names the
    first offending argument when there is one (the server reports it as OpenAI's ``param``)."""

    exit_code = 2

    def __init__(self, message: str, problems: Iterable[str] = (), *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message, problems)


class ContextOverflowError(InvalidRequestError):
    """A prompt (plus what must be generated) does not fit the context window."""

    def __init__(self, message: str, *, needed: int, n_ctx: int) -> None:
        self.needed = needed
        self.n_ctx = n_ctx
        super().__init__(message)


class NativeError(EdgeLoraError):
    """llama.cpp reported a failure (decode, context creation)."""


class CancelledError(EdgeLoraError):
    """A call or a model load was cancelled (a :class:`~edge_lora.CancelToken`, or a load-progress
    callback that returned False)."""

    exit_code = 130


class NonFiniteLogitsError(EdgeLoraError):
    """The logits turned NaN or infinite during a generation (an adapter scale or weight so large
    that the computation overflows): the generation stops instead of sampling garbage."""

    exit_code = 1


class EngineBuildError(EdgeLoraError):
    """The native engine (llama.cpp as built on this machine) failed its smoke test here:
    it crashed, aborted or computed wrong numbers. The message names the fix."""

    exit_code = 4
