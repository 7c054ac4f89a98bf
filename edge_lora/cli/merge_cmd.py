"""``edge-lora merge``: bake adapters into a GGUF base (edge_lora.merge)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from ..errors import MissingDependencyError
from .common import add_output_flags, report

HELP = "merge LoRA/DoRA adapters into a GGUF base, re-quantized, as a new GGUF model"
EPILOG = """examples:
  edge-lora merge base-Q4_K_M.gguf sql.gguf -o base-sql.gguf
  edge-lora merge base.gguf sql.gguf:0.8 tone.gguf:-0.3 -o mix.gguf --outtype q8_0
  edge-lora merge base.gguf ./my-dora-adapter -o merged.gguf       # PEFT/MLX folder, DoRA included
  edge-lora merge base.gguf sql.gguf -o base-sql.gguf --calibration train.txt
  edge-lora merge base.gguf sql.gguf --dry-run                      # the plan, nothing written

Only the tensors an adapter touches change; every other tensor is copied byte for byte.
Quantized touched tensors are re-quantized by ggml's quantizer with GPTQ error feedback,
calibrated by running the base with the adapters hot (--requant nearest: plain rounding,
faster, but it loses most of a change smaller than half a quantization step).
exit status: 0 merged, 2 refused (every problem listed, nothing written)"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..merge import OUTTYPES
    from ..merge.model_merge import REQUANT

    p = sub.add_parser("merge", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE.gguf", help="the GGUF base model (any quantization)")
    p.add_argument("adapters", nargs="+", metavar="ADAPTER[:SCALE]",
                   help="GGUF LoRA adapters or PEFT/MLX adapter folders (DoRA too), merged in this order at "
                        "SCALE (default 1.0; may be negative)")
    p.add_argument("-o", "--output", metavar="OUT.gguf", help="the merged model (not needed with --dry-run)")
    p.add_argument("--outtype", default="same", metavar="TYPE",
                   help=f"type of the touched tensors: same (default: each keeps its own) or one of "
                        f"{', '.join(k for k in OUTTYPES if k != 'same')}")
    p.add_argument("--requant", choices=REQUANT, default="gptq",
                   help="gptq (default): calibrated error feedback; nearest: ggml's rounding alone")
    p.add_argument("--calibration", metavar="TEXT_FILE",
                   help="calibration text (e.g. like your training data; default: the hot model's own answers)")
    p.add_argument("--adapter-name", metavar="NAME", help="PEFT folders holding several adapters: the one to merge")
    p.add_argument("--text-only", action="store_true", help="PEFT/MLX folders of multimodal models: the text model's part")
    p.add_argument("--threads", type=int, metavar="N", help="threads for calibration and quantization (default: all cores)")
    add_output_flags(p)
    p.set_defaults(func=run)
    return p


def _sources(args: argparse.Namespace) -> list[object]:
    from .common import parse_adapter_arg

    items: list[object] = []
    for text in args.adapters:
        path, scale = parse_adapter_arg(text)
        if Path(path).suffix.lower() == ".gguf" and not Path(path).is_dir():
            items.append((path, scale))
            continue
        try:  # a PEFT/MLX checkpoint: read by the converter package, as `edge-lora convert` is
            reader = importlib.import_module("edge_lora_convert.merge_source")
        except ImportError as exc:
            raise MissingDependencyError(f"{path}: reading PEFT/MLX adapters needs the converter ({exc}); "
                                         "pip install 'edge-lora[convert]'") from exc
        items.append(reader.lora_source(path, args.base, scale=scale, adapter_name=args.adapter_name,
                                        text_only=args.text_only))
    return items


def run(args: argparse.Namespace) -> int:
    from ..merge import merge

    calibration = None
    if args.calibration is not None:
        calibration = Path(args.calibration).read_text(encoding="utf-8", errors="replace")
    result = merge(
        args.base, _sources(args), args.output, outtype=args.outtype, dry_run=args.dry_run, overwrite=args.force,
        progress=not args.quiet, threads=args.threads, requant=args.requant, calibration=calibration,
    )
    return report(args, lambda: as_json(result), result.notes, lambda: _summary(result))


def _summary(result: object) -> str:
    r = result
    where = f"wrote {r.out_path}" if r.out_path else "dry run, nothing written"  # type: ignore[attr-defined]
    types = sorted({f"{t.base_type}->{t.out_type}" for t in r.tensors})  # type: ignore[attr-defined]
    return (f"{where}: {len(r.tensors)} tensors merged ({', '.join(types)}), {r.copied} copied; "  # type: ignore[attr-defined]
            f"{r.out_size / 1e6:.1f} MB (base {r.base_size / 1e6:.1f} MB), {r.seconds:.1f} s"  # type: ignore[attr-defined]
            + (f"; calibrated on {r.calibration}" if r.calibration else ""))  # type: ignore[attr-defined]


def as_json(result: object) -> dict[str, object]:
    r = result
    return {
        "output": str(r.out_path) if r.out_path else None, "base": str(r.base_path), "adapters": list(r.adapters),
        "outtype": r.outtype, "requant": r.requant, "calibration": r.calibration, "copied": r.copied,
        "base_size": r.base_size, "out_size": r.out_size, "seconds": round(r.seconds, 3), "notes": list(r.notes),
        "tensors": [{"name": t.name, "base_type": t.base_type, "out_type": t.out_type, "adapters": list(t.adapters),
                     "dora": t.dora, "change_lost": t.change_lost, "note": t.note} for t in r.tensors],
    }
