"""``edge-lora inspect``: describe a GGUF adapter or base."""

from __future__ import annotations

import argparse
import json

from ..inspect import describe, format_text

HELP = "describe a GGUF adapter or base; with --base, check an adapter against it"
EPILOG = """examples:
  edge-lora inspect sql.gguf
  edge-lora inspect sql.gguf --base gemma-3-270m-Q4_K_M.gguf
  edge-lora inspect gemma-3-270m-Q4_K_M.gguf --json

exit status: 0 fine, 1 the adapter does not fit the base (or a base's hyperparameters
would crash llama.cpp), 2 unreadable file"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file", metavar="FILE.gguf")
    p.add_argument("--base", metavar="BASE.gguf", help="report every problem of FILE as an adapter on this base")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    report = describe(args.file, base=args.base)
    print(json.dumps(report, indent=2, default=str) if args.json else format_text(report))
    compat = report.get("compatibility")
    if report.get("kind") == "base" and report.get("problems"):
        return 1
    return 1 if compat is not None and not compat["compatible"] else 0
