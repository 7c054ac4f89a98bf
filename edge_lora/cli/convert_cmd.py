"""``edge-lora convert``: argument definitions and the command. The converter (edge_lora_convert)
is imported when the command runs: the CLI works where only the runtime is installed."""

from __future__ import annotations

import argparse

from ..formats.adapter_file import OUTTYPES
from .common import add_output_flags, report

HELP = "convert a PEFT or MLX-LM LoRA checkpoint to a GGUF adapter"
EPILOG = """examples:
  edge-lora convert ./my-peft-adapter --base gemma-3-270m-Q4_K_M.gguf -o sql.gguf
  edge-lora convert ./mlx-adapters --base llama-3.2-1b.gguf --outtype q8_0
  edge-lora convert ./my-peft-adapter --arch qwen2 --dry-run      # unchecked, writes nothing

exit status: 0 converted, 2 refused (every problem listed, nothing written)"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("adapter", help="PEFT or MLX-LM adapter: its folder (adapter_config.json + weights), its "
                   "adapter_config.json or its weights file")
    p.add_argument("--base", metavar="BASE.gguf", help="GGUF base model (any quantization) to check every tensor against")
    p.add_argument("--arch", metavar="NAME", help="architecture when converting without --base (unchecked)")
    p.add_argument("-o", "--output", metavar="OUT.gguf", help="output file (default: ADAPTER.gguf beside the directory)")
    p.add_argument("--outtype", choices=list(OUTTYPES), default="f16", help="storage type of the LoRA tensors (default f16)")
    p.add_argument("--adapter-name", metavar="NAME", help="the PEFT adapter to convert when the file holds several")
    p.add_argument("--text-only", action="store_true",
                   help="multimodal checkpoint: drop the vision/audio towers' LoRA, convert the text model's")
    add_output_flags(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from edge_lora_convert.converter import convert

    result = convert(
        args.adapter,
        base=args.base,
        arch=args.arch,
        out=args.output,
        outtype=args.outtype,
        dry_run=args.dry_run,
        overwrite=args.force,
        progress=not args.quiet,
        adapter_name=args.adapter_name,
        text_only=args.text_only,
    )
    where = f"wrote {result.out_path}" if result.out_path else "dry run, nothing written"
    return report(args, lambda: {
            "output": str(result.out_path) if result.out_path else None,
            "arch": result.arch,
            "alpha": result.alpha,
            "source_format": result.source_format,
            "modules": result.modules,
            "tensors": len(result.tensors),
            "checked_against_base": result.checked_against_base,
            "notes": result.notes,
        }, result.notes, lambda: f"{where}: {result.arch}, {result.modules} modules, {len(result.tensors)} tensors, "
                                 f"alpha {result.alpha:g}, from {result.source_format}")
