"""Describe a GGUF adapter or base, and an adapter's compatibility with a base."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from gguf import Keys, LlamaFileType

from .lora.compat import adapter_problems, adapter_ranks
from .families import adapter_archs
from .families.base_check import base_problems
from .formats.gguf_file import ArrayLength, GGUFInfo, read_gguf


def describe(path: str | Path, base: str | Path | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``path``; with ``base``, a compatibility report too."""
    info = read_gguf(path)
    if info.is_adapter:
        report = describe_adapter(info)
        if base is not None:
            base_info = read_gguf(base)
            problems = adapter_problems(info, base_info, archs=adapter_archs(base_info.architecture))
            report["compatibility"] = {"base": str(base_info.path), "compatible": not problems, "problems": problems}
        return report
    report = describe_base(info)
    if base is not None:
        report["compatibility"] = {
            "base": str(base),
            "compatible": False,
            "problems": [f"{info.path} is a base model, not an adapter"],
        }
    return report


def describe_adapter(info: GGUFInfo) -> dict[str, Any]:
    ranks = adapter_ranks(info)
    md = info.metadata
    provenance = {k.split(".", 1)[1]: _plain(v) for k, v in md.items() if k.startswith("edge_lora.")}
    return {
        "path": str(info.path),
        "kind": "adapter",
        "architecture": info.architecture,
        "adapter_type": md.get(Keys.Adapter.TYPE),
        "alpha": md.get(Keys.Adapter.LORA_ALPHA, 0.0),
        # an activated LoRA's invocation tokens (None for a plain LoRA)
        "alora_invocation_tokens": _plain(md[Keys.Adapter.ALORA_INVOCATION_TOKENS])
        if Keys.Adapter.ALORA_INVOCATION_TOKENS in md else None,
        "ranks": sorted(set(ranks.values())),
        "targets": sorted(ranks),
        "n_targets": len(ranks),
        "tensor_types": dict(Counter(t.type_name for t in info.tensors.values())),
        "size_bytes": info.file_size,
        "name": md.get(Keys.General.NAME, ""),
        "provenance": provenance,
        "problems": adapter_problems(info, None),
    }


def describe_base(info: GGUFInfo) -> dict[str, Any]:
    md = info.metadata
    ftype = md.get(Keys.General.FILE_TYPE)
    try:
        quant = LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        quant = f"file_type {ftype}"
    template = md.get(Keys.Tokenizer.CHAT_TEMPLATE)
    vocab = md.get(Keys.Tokenizer.LIST)
    return {
        "path": str(info.path),
        "kind": "base",
        "architecture": info.architecture,
        "name": md.get(Keys.General.NAME, ""),
        "size_bytes": info.file_size,
        "quantization": quant,
        "tensor_types": dict(Counter(t.type_name for t in info.tensors.values())),
        "layers": info.arch_value(Keys.LLM.BLOCK_COUNT),
        "context_length": info.arch_value(Keys.LLM.CONTEXT_LENGTH),
        "embedding_length": info.arch_value(Keys.LLM.EMBEDDING_LENGTH),
        "vocab_size": vocab.length if isinstance(vocab, ArrayLength) else len(vocab or []),
        "has_chat_template": isinstance(template, str) and bool(template),
        "has_output_tensor": "output.weight" in info.tensors,
        "n_tensors": len(info.tensors),
        "problems": base_problems(info),
    }


def _plain(value: Any) -> Any:
    return value.length if isinstance(value, ArrayLength) else value


def format_text(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`describe`'s report."""
    lines = [f"{report['path']}: {report['kind']} ({report['architecture']})"]
    skip = {"path", "kind", "architecture", "targets", "provenance", "compatibility", "problems"}
    for key, value in report.items():
        if key in skip:
            continue
        if key == "size_bytes":
            value = f"{value / 1e6:.2f} MB"
        lines.append(f"  {key}: {value}")
    if report.get("targets"):
        lines.append(f"  targets: {', '.join(report['targets'][:8])}" + (" ..." if len(report["targets"]) > 8 else ""))
    for key, value in (report.get("provenance") or {}).items():
        lines.append(f"  provenance.{key}: {value}")
    for p in report.get("problems") or []:
        lines.append(f"  problem: {p}")
    compat = report.get("compatibility")
    if compat:
        verdict = "compatible" if compat["compatible"] else f"NOT compatible ({len(compat['problems'])} problems)"
        lines.append(f"  with base {compat['base']}: {verdict}")
        lines += [f"    - {p}" for p in compat["problems"]]
    return "\n".join(lines)


