"""Adapters given as a PEFT or MLX-LM checkpoint (``serve --adapter NAME=FOLDER``, or vLLM's
``lora_path`` naming such a folder): converted to GGUF on the first load, checked against the
served base like ``edge-lora convert --base``, and kept in a cache keyed by content, so loading
the same checkpoint again (after a restart too) reads the GGUF it gave.

The converter (``edge_lora_convert``) is imported when a checkpoint is converted, and from the
CLI only: ``serve`` hands a :class:`ConvertedAdapters` to the server
(:attr:`~edge_lora.server.ServerSettings.checkpoints`), which never imports the converter, so the
runtime and the server install and serve GGUF adapters without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import MissingDependencyError
from ..formats.gguf_file import GGUFInfo, starts_like_gguf
from ..outputs import atomic_path

#: the storage type of the converted factors (``edge-lora convert``'s default)
OUTTYPE = "f16"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Converted:
    """A checkpoint's GGUF adapter: ``path`` in the cache, the converter's ``notes``, whether it
    was converted now or found (``cached``), and the ``source`` files it came from."""

    path: Path
    source: tuple[Path, ...]
    cached: bool
    notes: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-lora/converted`` (``~/.cache/edge-lora/converted`` without it)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "edge-lora" / "converted"


class ConvertedAdapters:
    """GGUF adapters converted from checkpoints for one base, in ``cache_dir``.

    A cached file is named by the SHA-256 of what decides the conversion: edge-lora's version,
    the output type, the base's shape (its metadata and tensor table) and the bytes of the
    checkpoint's config and weights file. Files are written atomically; two loads of the same
    checkpoint at once convert it once."""

    def __init__(self, cache_dir: Path, base: GGUFInfo) -> None:
        self.cache_dir = Path(cache_dir)
        self._base = base
        self._base_key: str | None = None
        self._lock = threading.Lock()

    def gguf_for(self, checkpoint: Path) -> Converted:
        """The GGUF adapter of ``checkpoint`` (a PEFT or MLX-LM folder, its config or weights file).

        Raises :class:`MissingDependencyError` when the converter is not installed (or a ``.bin``
        checkpoint needs torch), :class:`~edge_lora.errors.CheckpointError` /
        :class:`~edge_lora.errors.ConversionError` listing every problem, as ``convert`` does."""
        try:
            from edge_lora_convert.checkpoint import checkpoint_files
            from edge_lora_convert.converter import convert
        except ImportError as exc:
            raise MissingDependencyError(
                f"{checkpoint}: is a training checkpoint, and converting it needs edge-lora's converter: "
                f"pip install 'edge-lora[convert]' ({exc}); or convert it elsewhere with edge-lora convert "
                "and load the .gguf") from exc
        files = checkpoint_files(checkpoint)
        digest = self._digest(files)
        out = self.cache_dir / f"{digest[:32]}.gguf"
        meta = out.with_suffix(".json")
        with self._lock:
            if starts_like_gguf(out):
                return Converted(out, files, True, _read_notes(meta))
            result = convert(checkpoint, base=self._base.path, out=out, outtype=OUTTYPE, overwrite=True)
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps({"source": [str(f) for f in files], "notes": result.notes}, indent=1),
                               encoding="utf-8")
        return Converted(out, files, False, list(result.notes))

    def _digest(self, files: tuple[Path, ...]) -> str:
        h = hashlib.sha256(f"edge-lora {__version__} {OUTTYPE}\n{self._base_digest()}\n".encode())
        for f in files:
            h.update(f"{f.name} {f.stat().st_size}\n".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        return h.hexdigest()

    def _base_digest(self) -> str:
        """What a conversion reads of the base: its metadata (a long array, the vocabulary, by its
        length and place) and tensor table, not the weights."""
        if self._base_key is None:
            table = [(t.name, list(t.shape), t.type_name) for t in self._base.tensors.values()]
            text = json.dumps([sorted(self._base.metadata.items()), table], default=str)
            self._base_key = hashlib.sha256(text.encode()).hexdigest()
        return self._base_key


def _read_notes(meta: Path) -> list[str]:
    try:
        notes = json.loads(meta.read_text(encoding="utf-8")).get("notes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in notes] if isinstance(notes, list) else []
