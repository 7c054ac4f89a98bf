"""``edge-lora doctor``: is the native engine right for this machine?"""

from __future__ import annotations

import argparse
import json

HELP = "check the native engine: versions, libraries, CPU variant, devices, and a smoke test in a child process"
EPILOG = """examples:
  edge-lora doctor
  edge-lora doctor --json

exit status: 0 all good, 1 the engine cannot be used here (the output names the fix)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.doctor import diagnose, format_text

    report = diagnose()
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0 if report["ok"] else 1
