"""What several commands share: adapter arguments (``NAME=PATH[:SCALE]``, ``ADAPTER[:SCALE]``,
``/use NAME[:SCALE]``) and the generation flags, which map onto the runtime's one option schema
(:data:`edge_lora.runtime.request.OPTIONS`: defaults and ranges are never re-declared here)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..runtime.request import OPTIONS

from ..errors import InvalidRequestError


def parse_adapter_arg(text: str) -> tuple[str, float]:
    """``"json.gguf:0.5"`` -> ``("json.gguf", 0.5)``; no ``:SCALE`` means 1.0. Negative scales are
    allowed (as in the runtime); a path that itself contains ``:`` works when a scale follows or
    when what follows the last ``:`` is not a number.

    Raises :class:`InvalidRequestError` for an empty path or a scale that is not finite."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            path = head
            if not math.isfinite(scale):
                raise InvalidRequestError(f"{text!r}: the scale {tail!r} is not a finite number")
    if not path:
        raise InvalidRequestError(f"{text!r}: no adapter path")
    return path, scale


def parse_adapter_spec(spec: str) -> tuple[str, str, float]:
    """``NAME=PATH[:SCALE]`` -> (name, path, scale); PATH[:SCALE] as :func:`parse_adapter_arg` reads it."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise InvalidRequestError(f"--adapter {spec!r}: expected NAME=PATH[:SCALE]")
    path, scale = parse_adapter_arg(rest)
    return name, path, scale


def parse_use(words: list[str]) -> dict[str, float]:
    mix: dict[str, float] = {}
    for w in words:
        name, colon, scale = w.partition(":")
        try:
            mix[name] = float(scale) if colon else None  # type: ignore[assignment]
        except ValueError as exc:
            raise InvalidRequestError(f"/use {w}: SCALE must be a number") from exc
    return mix


#: command-line flag of each generation option (``--temp`` as llama.cpp's tools spell it)
SAMPLING_FLAGS = {"max_tokens": "--max-tokens", "temperature": "--temp", "top_p": "--top-p", "top_k": "--top-k",
                  "min_p": "--min-p", "repeat_penalty": "--repeat-penalty", "repeat_last_n": "--repeat-last-n",
                  "presence_penalty": "--presence-penalty", "frequency_penalty": "--frequency-penalty", "seed": "--seed"}


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The generation flags; each left out keeps the runtime's default (shown in --help)."""
    for name, flag in SAMPLING_FLAGS.items():
        opt = OPTIONS[name]
        default = "a random one per call" if opt.default is None else f"{opt.default:g}"
        p.add_argument(flag, dest=name, type=opt.kind, default=None, metavar="N" if opt.kind is int else "X",
                       help=f"{opt.help} (default {default})")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when TEXT is generated (repeatable; not printed)")


def add_speculative_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", choices=["ngram", "draft_model"], default=None,
                   help="speculative decoding, the same output: ngram drafts from the prompt (prompt lookup), "
                        "draft_model from --model-draft")
    p.add_argument("--model-draft", default=None, metavar="GGUF",
                   help="a draft model of the base's vocabulary (implies --speculative draft_model; runs without adapters)")
    p.add_argument("--draft-max", type=int, default=8, metavar="N",
                   help="tokens drafted per step at most (default 8)")
    p.add_argument("--draft-p-min", type=float, default=0.75, metavar="P",
                   help="a draft model's draft ends below this probability of its top token (default 0.75)")


def speculative_setting(args: argparse.Namespace) -> Any:
    """The Runtime's ``speculative`` from ``--speculative``/``--model-draft``/``--draft-max``/
    ``--draft-p-min`` (None: off)."""
    if args.speculative is None and args.model_draft is None:
        return None
    from ..runtime.speculative import Speculative

    return Speculative(args.speculative, num_speculative_tokens=args.draft_max, model=args.model_draft,
                       draft_p_min=args.draft_p_min)


def sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The generation options given on the command line (the rest keep their defaults)."""
    opts = {name: getattr(args, name) for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    if args.stop:
        opts["stop"] = args.stop
    return opts


def add_output_flags(p: argparse.ArgumentParser, *, dry_run: str | None = "check and plan everything, write nothing",
                     force: str = "replace OUT.gguf if it exists", quiet: str = "no progress bar, no summary") -> None:
    """The flags of the commands that write: ``--dry-run`` (where the command has one), ``--force``,
    ``--json`` and ``-q``; each command words what they mean for it."""
    if dry_run is not None:
        p.add_argument("--dry-run", action="store_true", help=dry_run)
    p.add_argument("--force", action="store_true", help=force)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet)


def report(args: argparse.Namespace, as_json: Callable[[], dict[str, Any]], notes: Iterable[str],
           summary: Callable[[], str]) -> int:
    """How the writing commands end: ``--json`` prints ``as_json()``; otherwise each note goes to
    stderr and, unless ``-q``, ``summary()`` to stdout. Returns the exit status (0)."""
    if args.json:
        print(json.dumps(as_json(), indent=2))
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not args.quiet:
        print(summary())
    return 0


def add_chat_template_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-template-file", metavar="FILE", default=None,
                   help="a Jinja chat template replacing the base's (an adapter trained with another template)")
    p.add_argument("--chat-template-kwargs", action="append", default=[], metavar="[NAME=]JSON",
                   help="chat-template variables as a JSON object, e.g. '{\"enable_thinking\": false}': for "
                   "every call, or with NAME= the default of that --adapter (repeatable)")


def parse_template_kwargs(values: list[str], adapters: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``--chat-template-kwargs`` values -> (every call's, {adapter name: its defaults}).
    Raises :class:`InvalidRequestError` listing every bad value."""
    everyone: dict[str, Any] = {}
    per_adapter: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for raw in values:
        name, sep, text = raw.partition("=") if not raw.lstrip().startswith("{") else ("", "", raw)
        try:
            value = json.loads(text if sep else raw)
        except json.JSONDecodeError as exc:
            problems.append(f"{raw!r}: not JSON ({exc})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{raw!r}: give a JSON object of variable names to values")
        elif sep and name not in adapters:
            problems.append(f"{raw!r}: no --adapter named {name!r} (given: {', '.join(adapters) or 'none'})")
        else:
            (per_adapter.setdefault(name, {}) if sep else everyone).update(value)
    if problems:
        raise InvalidRequestError("--chat-template-kwargs: bad values", problems, param="--chat-template-kwargs")
    return everyone, per_adapter


def read_flag_file(flag: str, path: str | None) -> str | None:
    """The text of the file a flag names (read before the base loads), or None without the flag.
    Raises :class:`InvalidRequestError` when it cannot be read."""
    if path is None:
        return None
    from pathlib import Path

    from ..errors import InvalidRequestError

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{flag}: cannot read {path}: {exc}", param=flag) from None
