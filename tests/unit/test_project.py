"""The project's own files agree with each other: one version, one llama.cpp pin, every package shipped."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_has_one_definition():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edge_lora._version.__version__"}
    # no other file spells a version of edge-lora
    pattern = re.compile(r"""(__version__\s*=\s*["']|version\s*=\s*["']\d)""")
    offenders = [str(p.relative_to(ROOT)) for folder in ("edge_lora", "convert") for p in (ROOT / folder).rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8")) and p.name != "_version.py"]
    assert offenders == []


def test_cmake_pins_the_llama_cpp_python_of_pyproject():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    (cmake_pin,) = re.findall(r'set\(EDGE_LORA_LLAMA_CPP_PYTHON_VERSION "([^"]+)"\)', cmake)
    (py_pin,) = [d.split("==", 1)[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith("llama-cpp-python==")]
    assert cmake_pin == py_pin
    assert "tests/unit/test_project.py" in cmake  # the comment beside the pin names this test


def test_every_package_is_shipped():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edge_lora").rglob("__init__.py")}
    assert found - listed == set(), "add these packages to pyproject.toml's [tool.setuptools] packages"
    assert "edge_lora_convert" in listed and PYPROJECT["tool"]["setuptools"]["package-dir"]["edge_lora_convert"] == "convert"
