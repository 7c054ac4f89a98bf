"""The layering rules of the tree, read from the source (stdlib ``ast``, nothing imported).

- only ``edge_lora/engine/native.py`` imports ``llama_cpp`` or ``ctypes`` (one native boundary);
- the device side never imports the training stack (torch, transformers, peft), and imports the
  converter (``edge_lora_convert``) only inside functions of the CLI, which may reach it lazily;
- the rooms that serve (engine, runtime, server) and the shared ones (formats, lora, families,
  merge) never import the converter, even lazily;
- nothing imports the CLI but the CLI itself;
- the converter imports only the shared rooms of ``edge_lora`` (never the engine, runtime,
  server or CLI): the arrow points from ``convert/`` to ``edge_lora/`` and stops there.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATIVE = "edge_lora/engine/native.py"
TRAINING = ("torch", "transformers", "peft")
#: rooms of edge_lora that must never reach the converter
NO_CONVERTER = ("engine", "runtime", "server", "formats", "lora", "families", "merge")
#: what the converter may import from edge_lora
CONVERTER_MAY_USE = ("edge_lora.errors", "edge_lora._version", "edge_lora._validate", "edge_lora.outputs",
                     "edge_lora.formats", "edge_lora.lora", "edge_lora.families")


@dataclass(frozen=True)
class Import:
    file: str  # relative to ROOT
    line: int
    module: str  # absolute
    #: inside a function, or under ``if TYPE_CHECKING:``: not run when the module is imported
    lazy: bool


def _package(rel: Path) -> list[str]:
    parts = list(rel.with_suffix("").parts)
    if parts[0] == "convert":
        parts[0] = "edge_lora_convert"
    return parts[:-1] if parts[-1] != "__init__" else parts[:-1]


def imports_of(path: Path) -> list[Import]:
    rel = path.relative_to(ROOT)
    pkg = _package(rel)
    if rel.name == "__init__.py":
        pkg = list(rel.parent.parts)
        if pkg[0] == "convert":
            pkg[0] = "edge_lora_convert"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING")
            if isinstance(child, ast.Import):
                found.extend(Import(str(rel), child.lineno, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = pkg[: len(pkg) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                found.append(Import(str(rel), child.lineno, mod, lazy))
                found.extend(Import(str(rel), child.lineno, f"{mod}.{a.name}", lazy) for a in child.names)
            elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                  and child.func.attr == "import_module" and child.args
                  and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
                found.append(Import(str(rel), child.lineno, child.args[0].value, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def _all(folder: str) -> list[Import]:
    return [i for p in sorted((ROOT / folder).rglob("*.py")) for i in imports_of(p)]


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


DEVICE = _all("edge_lora")
CONVERTER = _all("convert")


def test_the_walk_sees_imports():
    """The rules below would pass vacuously on a walk that found nothing."""
    assert any(i.module == "llama_cpp" and i.file == NATIVE for i in DEVICE)
    assert any(_under(i.module, "edge_lora_convert") and i.lazy for i in DEVICE)
    assert any(_under(i.module, "edge_lora.formats") for i in CONVERTER)


def test_only_the_native_module_imports_llama_cpp_or_ctypes():
    bad = [i for i in DEVICE + CONVERTER if _top(i.module) in ("llama_cpp", "ctypes") and i.file != NATIVE]
    assert bad == []


def test_the_device_side_never_imports_the_training_stack():
    bad = [i for i in DEVICE if _top(i.module) in TRAINING]
    assert bad == []


def test_the_converter_is_reached_only_lazily_and_only_from_the_cli():
    bad = [i for i in DEVICE if _top(i.module) == "edge_lora_convert"
           and (not i.lazy or not i.file.startswith("edge_lora/cli/"))]
    assert bad == []


def test_the_serving_and_shared_rooms_never_reach_the_converter():
    rooms = tuple(f"edge_lora/{r}/" for r in NO_CONVERTER)
    bad = [i for i in DEVICE if i.file.startswith(rooms) and _top(i.module) == "edge_lora_convert"]
    assert bad == []


def test_nothing_imports_the_cli():
    bad = [i for i in DEVICE + CONVERTER if _under(i.module, "edge_lora.cli") and not i.file.startswith("edge_lora/cli/")]
    assert bad == []


def test_the_converter_uses_only_the_shared_rooms():
    bad = [i for i in CONVERTER if _top(i.module) == "edge_lora" and i.module != "edge_lora"
           and not any(_under(i.module, m) for m in CONVERTER_MAY_USE)]
    assert bad == []


def test_the_pure_rooms_import_without_the_engine_or_torch():
    """What the unit tier tests loads neither llama.cpp's bindings nor the training stack: it runs
    in seconds on a machine without a built engine."""
    import subprocess
    import sys

    mods = ["edge_lora", "edge_lora.runtime.request", "edge_lora.runtime.kv", "edge_lora.runtime.stops",
            "edge_lora.cli.common", "edge_lora.lora.pair", "edge_lora.lora.adapter", "edge_lora.families",
            "edge_lora.outputs", "edge_lora.formats.adapter_file", "edge_lora.inspect", "edge_lora_convert.peft_config"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'torch', 'transformers', 'peft'))\n"
            + "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
