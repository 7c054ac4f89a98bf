"""Where the tools write: one output-path policy and the atomic writers.

Every tool that writes (convert, combine, merge: a file; export: a folder) checks its output
with :func:`check_output` before any work is written, and writes it with :func:`atomic_path`
or :func:`atomic_dir`: a temporary file or folder beside the target, renamed over it at the
end, so an interrupted run never leaves a half-written output or loses what was there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import OutputExistsError, OutputPathError


def check_output(out: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]] = (), overwrite: bool = False,
                 dry_run: bool = False, folder: bool = False,
                 replaceable: Callable[[Path], str | None] | None = None) -> Path:
    """Check an output path, in this order, raising the first problem:

    1. it is one of ``inputs``, an existing file inside an input folder, or (for a ``folder``)
       a folder holding an input -> :class:`OutputExistsError`;
    2. it is the wrong kind of path (a folder where a file goes, a file where a folder goes) ->
       :class:`OutputExistsError`;
    3. it exists and ``overwrite`` was not asked for -> :class:`OutputExistsError` (not in a
       ``dry_run``, which writes nothing); ``replaceable(out)`` may still refuse an existing
       folder (its reason);
    4. its nearest existing parent is not a writable folder -> :class:`OutputPathError`.

    Returns the output as a :class:`~pathlib.Path`."""
    path = Path(out)
    what = "folder" if folder else "file"
    for p in (Path(i) for i in inputs):
        if not p.exists() or not path.exists():
            continue
        inside = p.is_dir() and path.resolve().is_relative_to(p.resolve())  # a file of an input folder
        if path.resolve() == p.resolve() or inside or (folder and p.resolve().is_relative_to(path.resolve())):
            held = ("" if path.resolve() == p.resolve() else f" (a file of {p})" if inside else f" (it holds {p.name})")
            raise OutputExistsError(f"{path}: is one of the inputs{held}; write the output to a new {what}")
    if path.exists() and path.is_dir() != folder:
        raise OutputExistsError(f"{path}: is a {'file' if folder else 'directory'}; give a {what} name"
                                + ("" if folder else " ending in .gguf"))
    if path.exists() and not dry_run:
        if not overwrite:
            raise OutputExistsError(f"{path}: already exists (pass --force to replace it)")
        reason = replaceable(path) if replaceable is not None else None
        if reason:
            raise OutputExistsError(f"{path}: {reason}")
    parent = path.parent if path.parent != Path("") else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: cannot write there ({existing} is not a writable folder)")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    On any exception the temporary file is removed and ``target`` is untouched,
    so an interrupted run never leaves a half-written file or loses the old one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the mode a plain open() would (or the old file's)
    os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_dir(target: str | os.PathLike[str], files: dict[str, bytes], *, overwrite: bool) -> None:
    """Write the folder ``target`` holding ``files`` (name -> bytes): written beside it, then
    renamed in. An old ``target`` (``overwrite``) is renamed away first and removed only once
    the new one is in place; if the rename fails it is put back."""
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it a plain mkdir's mode
        for name, data in files.items():
            _write_file(tmp / name, data)
        if out.exists():
            if not overwrite:  # it appeared while we wrote
                raise OutputExistsError(f"{out}: already exists (pass --force to replace it)")
            old = tmp.with_name(tmp.name.removesuffix(".tmp") + ".old")  # unique as tmp is
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.replace(old, out)  # put the old one back
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())
