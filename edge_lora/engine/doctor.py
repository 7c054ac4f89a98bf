"""What ``edge-lora doctor`` reports: versions, the native build, devices, the smoke test.

Everything native runs in a child process (:func:`edge_lora.engine.check.run_probe`), so a
build that faults on this CPU is reported, with the fix, instead of killing the caller.
The fresh verdict also replaces the runtime's cached one.
"""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace
from typing import Any

from . import check
from .cpu import cpu_info
from .offload import skipped_devices_note


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def diagnose(*, smoke: bool = True) -> dict[str, Any]:
    """The doctor's report as a dict (``--json`` prints it as is): ``ok`` is False when the
    engine could not be probed or its smoke test failed; ``problems`` say why, ``fix`` what to do,
    ``notes`` what is worth knowing but not wrong."""
    from .. import __version__

    cpu = cpu_info()
    libdir = check.lib_dir()
    build = check.manifest(libdir)
    report: dict[str, Any] = {
        "edge_lora": __version__,
        "llama_cpp_python": _version("llama-cpp-python"),
        "lib_dir": str(libdir) if libdir else None,
        "engine_build": build,
        "cpu": {"model": cpu.model, "arch": cpu.arch, "features": list(cpu.features)},
        "problems": [],
        "notes": [],
        "fix": None,
    }
    if libdir is None:
        report["problems"].append("llama-cpp-python is not installed")
        report["fix"] = check.FIX
        report["ok"] = False
        return report
    if build is None:
        report["notes"].append(
            "these libraries were not built by edge-lora's CMakeLists.txt (pip's default llama-cpp-python build "
            "targets this machine's CPU only, with AMX where the CPU lists it)")
    elif build.get("cpu") == "native":
        report["notes"].append("a native build: it runs on CPUs with this machine's features only")
    if "amx_tile" in cpu.features and (build is None or build.get("cpu") == "native"):
        report["notes"].append("this CPU lists AMX: builds that use ggml's AMX path fault on some Linux hosts")
    result = check.run_probe(check.probe_args() if smoke else [], timeout=check.probe_timeout())
    report["probe"] = result.data
    report["probe_seconds"] = round(result.seconds, 3)
    if result.data:
        seen = [SimpleNamespace(**d) for d in result.data.get("devices", [])]  # the child's devices
        skipped = skipped_devices_note(result.data.get("backends", []), seen)
        if skipped:
            report["notes"].append(skipped)
    if smoke:
        check.record(check.fingerprint(libdir), result)
    if not result.ok:
        what, fix = check.failure_message(result)
        report["problems"].append(what)
        if result.stderr:
            report["stderr_tail"] = result.stderr
        report["fix"] = fix
    report["ok"] = result.ok
    return report


def format_text(r: dict[str, Any]) -> str:
    """The report for a terminal."""
    lines = []

    def row(label: str, value: object) -> None:
        lines.append(f"  {label:<18} {value}")

    row("edge-lora", r["edge_lora"])
    row("llama-cpp-python", r["llama_cpp_python"])
    probe = r.get("probe") or {}
    if probe.get("ggml_version"):
        row("llama.cpp (ggml)", probe["ggml_version"])
    row("libraries", r["lib_dir"])
    build = r.get("engine_build")
    if build:
        variants = ", ".join(build.get("cpu_variants") or []) or "-"
        row("  built by", f"{build['built_by']}: backend {build['backend']}, CPU {build['cpu']}"
            + (f" (variants {variants})" if build.get("cpu_variants") else ""))
    else:
        row("  built by", "not edge-lora's CMakeLists.txt")
    libs = probe.get("libraries") or []
    if libs:
        row("  loaded", ", ".join(p.rsplit("/", 1)[-1] for p in libs))
    cpu = r["cpu"]
    row("CPU", f"{cpu['model']} ({cpu['arch']}): {' '.join(cpu['features']) or '-'}")
    if probe:
        row("CPU variant", probe.get("cpu_variant"))
        row("backends", ", ".join(probe.get("backends", [])))
        for d in probe.get("devices", []):
            mem = f", {d['memory_total'] / 2**30:.1f} GiB ({d['memory_free'] / 2**30:.1f} free)" if d["kind"] != "cpu" and d["memory_total"] else ""
            row("device", f"{d['name']}: {d['description']} [{d['kind']}{mem}]")
        row("GPU offload", probe.get("gpu_offload"))
        if probe.get("offload_device"):
            row("smoke test on", probe["offload_device"])
    smoke = probe.get("smoke")
    if smoke:
        errs = smoke["logits_rel_err"]
        q = max(v for k, v in errs.items() if k.startswith("quantized"))
        f = max(v for k, v in errs.items() if k.startswith("f32"))
        status = "passed" if smoke["ok"] else "FAILED"
        row("smoke test", f"{status} in {smoke['seconds']:.2f} s: {' '.join(smoke['weight_types'])} and f32 weights, "
            f"with and without a LoRA; logits within {q:.1e} (quantized) and {f:.1e} (f32) of the NumPy reference; "
            f"greedy tokens {' '.join(map(str, smoke['tokens']))}")
    for n in r["notes"]:
        lines.append(f"note: {n}")
    for p in r["problems"]:
        lines.append(f"problem: {p}")
    if r.get("stderr_tail"):
        lines.append("child stderr (last lines):\n    " + r["stderr_tail"].replace("\n", "\n    "))
    if r.get("fix"):
        lines.append(f"fix: {r['fix']}")
    lines.append("all good" if r["ok"] else "the engine is NOT usable on this machine")
    return "\n".join(lines)
