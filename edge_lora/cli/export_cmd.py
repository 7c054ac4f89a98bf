"""``edge-lora export``: argument definitions and the command (the converter imported when it runs)."""

from __future__ import annotations

import argparse

from .common import add_output_flags, report

HELP = "export a GGUF LoRA adapter as a PEFT directory (for PEFT, transformers and vLLM)"
EPILOG = """examples:
  edge-lora export sql.gguf --peft ./sql-peft --base llama-3.2-1b-Q4_K_M.gguf
  edge-lora export tone.gguf --peft ./tone-peft                  # qwen, gemma, phi3: no --base needed
  vllm serve meta-llama/Llama-3.2-1B-Instruct --enable-lora --lora-modules sql=./sql-peft

--base is required for llama/mistral adapters that touch Q or K (llama.cpp permuted their
rows; the head counts undo it) and checks any adapter against the base.

exit status: 0 exported, 2 refused (every problem listed, nothing written)"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("adapter", metavar="ADAPTER.gguf", help="the GGUF LoRA adapter to export")
    p.add_argument("--peft", metavar="OUT_DIR", required=True,
                   help="write a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--base", metavar="BASE.gguf",
                   help="GGUF base model: checks the adapter and gives the head counts llama/mistral Q/K need")
    p.add_argument("--expert-layout", choices=("fused", "per-expert"), default="fused",
                   help="MoE expert LoRA as transformers 5 holds experts (fused 3-D parameters, PEFT "
                        "target_parameters; the default) or as transformers 4 did (one module per expert)")
    add_output_flags(p, dry_run=None, force="replace OUT_DIR if it exists (atomically)", quiet="no summary")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from edge_lora_convert.export_peft import export_peft

    result = export_peft(args.adapter, args.peft, base=args.base, overwrite=args.force,
                         expert_layout=args.expert_layout)
    return report(args, lambda: {
            "output": str(result.out_dir),
            "arch": result.arch,
            "alpha": result.alpha,
            "r": result.r,
            "lora_alpha": result.lora_alpha,
            "modules": result.modules,
            "max_rank": max(result.ranks.values()),
            "tensors": len(result.tensors),
            "base_model": result.base_model,
            "notes": list(result.notes),
        }, result.notes, lambda: f"wrote {result.out_dir}: {result.arch}, {result.modules} modules, "
                                 f"{len(result.tensors)} tensors, r {result.r}, lora_alpha {result.lora_alpha:g}")
