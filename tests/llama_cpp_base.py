"""Write a tiny Hugging Face model's GGUF base with llama.cpp's own converter (``convert_hf_to_gguf.py``
and its ``conversion/`` classes, from the pinned sdist the engine was built from), replacing only the
vocabulary by the engine's synthetic one: the base is then independent of edge-lora's family table.

Run as a script (the vendored converter imports its own gguf-py, which must not meet the installed
one in the test process): ``python llama_cpp_base.py VENDOR_DIR HF_DIR OUT.gguf [CONVERTER OPTIONS]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def vendored_llama_cpp() -> Path | None:
    """The llama.cpp source tree of the engine build (``build/engine-*/_src/.../vendor/llama.cpp``)."""
    found = sorted(ROOT.glob("build/engine-*/_src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[0].parent if found else None


def require_vendored_llama_cpp() -> Path:
    """:func:`vendored_llama_cpp`, failing under CI (``make`` builds it) and skipping elsewhere."""
    import os

    import pytest

    vendor = vendored_llama_cpp()
    if vendor is None:
        if os.environ.get("CI"):
            pytest.fail("the engine build tree (build/engine-*/_src) is missing: make builds it")
        pytest.skip("no engine build tree with llama.cpp's converter")
    return vendor


def write_llama_cpp_base(hf_dir: Path, out: Path, vendor: Path, *extra: str) -> None:
    """Convert ``hf_dir`` (a ``save_pretrained`` folder) to an f32 GGUF base at ``out``; ``extra``:
    more converter options (``--fuse-gate-up-exps``)."""
    proc = subprocess.run([sys.executable, __file__, str(vendor), str(hf_dir), str(out), *extra],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed for {hf_dir}:\n{proc.stderr[-3000:]}")


def _main(vendor: Path, hf_dir: Path, out: Path, extra: list[str]) -> None:
    sys.path[:0] = [str(vendor), str(vendor / "gguf-py")]
    import convert_hf_to_gguf as conv  # noqa: E402  (the vendored one)

    from edge_lora.engine.tiny import write_vocab

    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("model_type") == "granitemoehybrid" and "layer_types" in config:
        # transformers 5 saves Granite 4's layer types as linear_attention / full_attention; IBM's
        # configs (and the pinned converter) name them mamba / attention
        names = {"linear_attention": "mamba", "full_attention": "attention"}
        config["layer_types"] = [names.get(t, t) for t in config["layer_types"]]
        (hf_dir / "config.json").write_text(json.dumps(config))
    n_vocab = config.get("vocab_size") or config["text_config"]["vocab_size"]
    original = conv.get_model_class

    def get_model_class(*args, **kwargs):
        cls = original(*args, **kwargs)
        cls.set_vocab = lambda self: write_vocab(self.gguf_writer, n_vocab)  # this process converts one model
        return cls

    conv.get_model_class = get_model_class
    if not (hf_dir / "tokenizer.json").exists() and not (hf_dir / "tokenizer.model").exists():
        # some converters count the real vocabulary there (Gemma's trims embedding rows beyond it)
        vocab = {f"tok{i}": i for i in range(n_vocab)}
        (hf_dir / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": []}))
    # --no-mtp: the tiny models have no multi-token-prediction layers (where the class has them)
    mtp = getattr(original(config["architectures"][0]), "supports_mtp_export", False)
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outfile", str(out), "--outtype", "f32",
                *(["--no-mtp"] if mtp else []), *extra]
    conv.main()


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
