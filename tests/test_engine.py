"""The native engine as installed by the top-level CMakeLists.txt: the portable build, the
doctor, the smoke-test verdict the runtime relies on, and a bad build turned into a typed error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


from edge_lora.engine import check
from edge_lora.engine.probe import cpu_variant

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_cmake_pins_the_bindings_version_of_pyproject():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    pinned = re.search(r'EDGE_LORA_LLAMA_CPP_PYTHON_VERSION "([^"]+)"', cmake).group(1)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"llama-cpp-python=={pinned}"' in pyproject


def test_installed_engine_is_edge_loras_portable_build():
    libdir = check.lib_dir()
    build = check.manifest(libdir)
    assert build is not None, f"{libdir} holds no edge-lora-engine.json: the engine was not installed by CMakeLists.txt"
    assert build["built_by"] == "edge-lora CMakeLists.txt"
    assert build["cpu"] == "portable" and build["backend_dl"] is True
    variants = {p.name.removeprefix("libggml-cpu-").split(".")[0] for p in libdir.glob("libggml-cpu-*")}
    assert variants == set(build["cpu_variants"])
    assert {"x64", "sse42", "haswell", "zen4"} <= variants
    assert not any("sapphirerapids" in p.name or "amx" in p.name for p in libdir.iterdir())


def test_doctor_reports_the_engine_and_passes(tmp_path):
    env = {"EDGE_LORA_CACHE_DIR": str(tmp_path)}
    r = _run("-m", "edge_lora.cli", "doctor", "--json", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and not rep["problems"]
    assert rep["llama_cpp_python"] == "0.3.36" and rep["edge_lora"]
    probe = rep["probe"]
    assert probe["ggml_version"] and "CPU" in probe["backends"]
    assert any(d["kind"] == "cpu" for d in probe["devices"])
    # llama.cpp offloads where a GPU backend lists a GPU-type device: the build decides, not a constant
    from edge_lora.engine.offload import OFFLOAD_KINDS

    gpu = rep["engine_build"]["backend"] != "cpu" and any(d["kind"] in OFFLOAD_KINDS for d in probe["devices"])
    assert probe["gpu_offload"] == ("yes" if gpu else "no")
    assert probe["cpu_variant"] in rep["engine_build"]["cpu_variants"]
    assert any(p.endswith(f"libggml-cpu-{probe['cpu_variant']}.so") for p in probe["libraries"])
    smoke = probe["smoke"]
    assert smoke["ok"] and len(smoke["tokens"]) == 4
    assert {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0"} <= set(smoke["weight_types"])
    assert smoke["logits_rel_err"]["f32_base"] < 5e-3 and smoke["logits_rel_err"]["quantized_base"] < 0.05
    # the fresh verdict is what the runtime will use
    verdicts = json.loads((tmp_path / "engine-verdicts.json").read_text())
    assert [v["ok"] for v in verdicts.values()] == [True]
    text = _run("-m", "edge_lora.cli", "doctor", env=env)
    assert text.returncode == 0
    for needle in ("llama-cpp-python   0.3.36", "CPU variant", f"{probe['cpu_variant']}", "smoke test         passed", "all good"):
        assert needle in text.stdout


def test_smoke_verdict_is_taken_once_and_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_LORA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(check, "_passed", set())
    calls = []
    real = check.run_probe
    monkeypatch.setattr(check, "run_probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    from edge_lora import Runtime

    base = tiny("llama2").base_path
    with Runtime(base, n_ctx=64):
        pass
    with Runtime(base, n_ctx=64):
        pass
    assert calls == [1]  # once per process...
    verdicts = json.loads((tmp_path / "engine-verdicts.json").read_text())
    assert list(verdicts) == [check.fingerprint()] and verdicts[check.fingerprint()]["ok"]
    monkeypatch.setattr(check, "_passed", set())
    with Runtime(base, n_ctx=64):
        pass
    assert calls == [1]  # ...and then once per build and CPU: the cache answers


def _broken_lib_dir(tmp_path: Path, cpu_backend: str | None) -> Path:
    """A copy of the installed engine without its CPU variants; ``cpu_backend`` (a variant
    name) is installed as the plain ``libggml-cpu.so`` that ggml loads without a CPU check."""
    src = check.lib_dir()
    dst = tmp_path / "lib"
    dst.mkdir()
    for p in src.iterdir():
        if p.name.startswith("libggml-cpu"):
            continue
        if "ggml" in p.name or "llama" in p.name:
            shutil.copy2(p, dst / p.name, follow_symlinks=False)
    if cpu_backend:
        shutil.copy2(src / f"libggml-cpu-{cpu_backend}.so", dst / "libggml-cpu.so")
    return dst


def test_a_bad_build_is_a_typed_error_not_a_crash(tiny, tmp_path):
    """A build that cannot run here (no usable CPU backend) fails the child's smoke test: the
    runtime raises EngineBuildError naming the fix, the CLI exits 4, the verdict is cached."""
    bad = _broken_lib_dir(tmp_path, None)
    env = {"LLAMA_CPP_LIB_PATH": str(bad), "EDGE_LORA_CACHE_DIR": str(tmp_path / "cache")}
    base = str(tiny("llama2").base_path)
    code = (f"from edge_lora import Runtime, EngineBuildError\n"
            f"try:\n    Runtime({base!r}, n_ctx=64)\nexcept EngineBuildError as e:\n    print('TYPED', e)\n")
    r = _run("-c", code, env=env)
    assert r.returncode == 0, r.stderr
    assert "TYPED the native engine in" in r.stdout and "make engine" in r.stdout and "edge-lora doctor" in r.stdout
    verdicts = json.loads((tmp_path / "cache" / "engine-verdicts.json").read_text())
    assert [v["ok"] for v in verdicts.values()] == [False]
    cli = _run("-m", "edge_lora.cli", "run", base, "-p", "hi", "--max-tokens", "2", env=env)
    assert cli.returncode == 4 and "failed its smoke test" in cli.stderr
    doc = _run("-m", "edge_lora.cli", "doctor", env=env)
    assert doc.returncode == 1 and "fix: rebuild the engine" in doc.stdout and "NOT usable" in doc.stdout


def test_cpu_variant_names():
    assert cpu_variant(["/x/libggml-base.so.0", "/x/libggml-cpu-haswell.so"]) == "haswell"
    assert cpu_variant(["/x/libggml-cpu.so"]) == "built in"


def test_plain_llama_cpp_python_finds_the_backends(tmp_path):
    """Stock llama-cpp-python (``Llama(...)``, which loads ggml's backends itself) works with
    the installed engine from any folder: the CPU variants are found where they were installed."""
    code = (
        "import sys, llama_cpp\n"
        "from edge_lora.engine import tiny\n"
        "tiny.write_base('tiny.gguf')\n"
        "llm = llama_cpp.Llama('tiny.gguf', n_ctx=64, verbose=False)\n"
        "out = llm([300, 271, 265], max_tokens=4, temperature=0.0)\n"
        "print(out['usage']['completion_tokens'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "4"


def test_doctor_reports_libraries_that_cannot_load(tmp_path):
    """`import edge_lora` and the doctor work where llama.cpp's libraries cannot load at all."""
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run("-m", "edge_lora.cli", "doctor", env={"LLAMA_CPP_LIB_PATH": str(empty), "EDGE_LORA_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert "Shared library with base name 'llama' not found" in r.stdout and "fix: rebuild the engine" in r.stdout
    assert "Traceback" not in r.stderr
