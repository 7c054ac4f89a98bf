"""The ``edge-lora`` command: dispatch only. Library errors become messages and exit codes here."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import EdgeLoraError


#: the workstation-side commands: they run the converter package (edge_lora_convert)
WORKSTATION_COMMANDS = {
    "convert": "convert a PEFT/MLX LoRA checkpoint",
    "combine": "combine GGUF adapters into one",
    "export": "export a GGUF adapter as a PEFT directory",
}


def _add_workstation(sub: argparse._SubParsersAction) -> None:
    # The converter is a separate package (edge_lora_convert); the runtime never imports it
    # at module level, so `edge-lora` keeps working where only the runtime is installed.
    try:
        importlib.import_module("edge_lora_convert")
    except ImportError as exc:
        missing = exc  # `exc` itself is unbound when the except block ends
        for name, text in WORKSTATION_COMMANDS.items():
            p = sub.add_parser(name, help=f"{text} (converter not installed)")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda _args: _missing_converter(missing))
        return
    from . import combine_cmd, convert_cmd, export_cmd

    for mod in (convert_cmd, combine_cmd, export_cmd):
        mod.add_parser(sub)


def _missing_converter(exc: ImportError) -> int:
    print(f"edge-lora: the converter is not installed ({exc}); pip install 'edge-lora[convert]'", file=sys.stderr)
    return 3


def build_parser() -> argparse.ArgumentParser:
    from . import doctor, inspect_cmd, merge_cmd, run, serve

    parser = argparse.ArgumentParser(
        prog="edge-lora",
        description="Run LoRA fine-tunes on laptops: convert adapters to GGUF, inspect and run them over one base.",
    )
    parser.add_argument("--version", action="version", version=f"edge-lora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_workstation(sub)
    inspect_cmd.add_parser(sub)
    merge_cmd.add_parser(sub)
    run.add_parsers(sub)
    serve.add_parser(sub)
    doctor.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdgeLoraError as exc:
        print(f"edge-lora {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-lora: interrupted", file=sys.stderr)
        return 130

