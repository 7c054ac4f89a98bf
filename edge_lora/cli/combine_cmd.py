"""``edge-lora combine``: argument definitions and the command (the converter imported when it runs)."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from ..formats.adapter_file import OUTTYPES
from .common import add_output_flags, parse_adapter_arg, report

if TYPE_CHECKING:
    from edge_lora_convert.combine import CombineResult

#: edge_lora_convert.combine.METHODS (a test keeps them equal): the parser is built without the converter
METHODS = ("cat", "svd")

HELP = "combine GGUF LoRA adapters, each at its own scale, into one GGUF adapter"
EPILOG = """methods:
  cat   exact: per tensor the adapters' factors are stacked, ranks add up
  svd   each tensor's combined change truncated to rank R (--rank), with its relative error

examples:
  edge-lora combine sql.gguf tone.gguf:0.5 -o sql+tone.gguf
  edge-lora combine sql.gguf tone.gguf:-0.3 style.gguf:0.8 -o mix.gguf --method svd --rank 16
  edge-lora combine a.gguf b.gguf --method svd --rank 8 --dry-run    # the errors, nothing written

The combined file has alpha 0: loaded at scale 1 it applies every adapter at its SCALE.
exit status: 0 combined, 2 refused (every problem listed, nothing written)"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "combine", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("adapters", nargs="+", metavar="ADAPTER.gguf[:SCALE]",
                   help="GGUF LoRA adapters of one architecture, each at a user scale (default 1.0; may be negative)")
    p.add_argument("-o", "--output", metavar="OUT.gguf", help="the combined adapter (not needed with --dry-run)")
    p.add_argument("--method", choices=METHODS, default="cat",
                   help="cat (exact, ranks add up; default) or svd (truncated to --rank)")
    p.add_argument("--rank", type=int, metavar="R", help="svd: the rank of every combined tensor")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16", help="storage type of the LoRA tensors (default f16)")
    add_output_flags(p, dry_run="compute and report everything, write nothing")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from edge_lora_convert.combine import combine

    result = combine(
        [parse_adapter_arg(a) for a in args.adapters],
        args.output,
        method=args.method,
        rank=args.rank,
        outtype=args.outtype,
        dry_run=args.dry_run,
        overwrite=args.force,
        progress=not args.quiet,
    )
    return report(args, lambda: as_json(result), result.notes, lambda: summary(result))


def as_json(result: CombineResult) -> dict[str, object]:
    worst = result.worst
    return {
        "output": str(result.out_path) if result.out_path else None,
        "arch": result.arch,
        "method": result.method,
        "rank": result.rank,
        "outtype": result.outtype,
        "inputs": [{"label": i.label, "path": str(i.path), "scale": i.scale, "sha256": i.sha256} for i in result.inputs],
        "tensors": [{"name": t.name, "shape": list(t.shape), "sources": list(t.sources), "rank_in": t.rank_in,
                     "rank": t.rank, "rel_error": t.rel_error} for t in result.tensors],
        "worst": {"name": worst.name, "rel_error": worst.rel_error} if worst else None,
        "notes": list(result.notes),
    }


def summary(result: CombineResult) -> str:
    """The human report: for svd one line per tensor (ranks, relative error), then the totals."""
    lines = []
    if result.method == "svd":
        width = max(len(t.name) for t in result.tensors)
        lines.append(f"{'tensor':<{width}}  {'rank':>8}  rel. error")
        lines += [f"{t.name:<{width}}  {f'{t.rank_in}->{t.rank}':>8}  {t.rel_error:.3e}" for t in result.tensors]
    where = f"wrote {result.out_path}" if result.out_path else "dry run, nothing written"
    ranks = sorted({t.rank for t in result.tensors})
    span = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    lines.append(f"{where}: {result.arch}, {len(result.inputs)} adapters, {len(result.tensors)} tensors, "
                 f"rank {span}, {result.outtype}")
    worst = result.worst
    if worst is None:
        lines.append("method cat: exact (the sum of the adapters' changes, up to the storage type)")
    else:
        lines.append(f"method svd, rank {result.rank}: worst relative error {worst.rel_error:.3e} ({worst.name})")
    return "\n".join(lines)
