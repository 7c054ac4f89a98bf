"""The one output-path policy and the atomic writers."""

from __future__ import annotations

import os

import pytest

from edge_lora._validate import combined_error
from edge_lora.errors import GGUFFileError, IncompatibleAdapterError, OutputExistsError, OutputPathError
from edge_lora.outputs import atomic_dir, atomic_path, check_output


def test_file_output_rules_in_order(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(b"a")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "w.safetensors").write_bytes(b"w")
    with pytest.raises(OutputExistsError, match="is one of the inputs"):
        check_output(a, inputs=[a], overwrite=True)
    with pytest.raises(OutputExistsError, match="a file of"):  # an existing file of an input folder
        check_output(folder / "w.safetensors", inputs=[folder], overwrite=True)
    assert check_output(folder / "new.gguf", inputs=[folder]) == folder / "new.gguf"  # a new file there is fine
    with pytest.raises(OutputExistsError, match="is a directory"):
        check_output(folder, overwrite=True)
    with pytest.raises(OutputExistsError, match="--force"):
        check_output(a)
    assert check_output(a, dry_run=True) == a  # a dry run writes nothing
    assert check_output(a, overwrite=True) == a


def test_folder_output_rules(tmp_path):
    out = tmp_path / "peft"
    out.mkdir()
    (out / "adapter.gguf").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="it holds adapter.gguf"):
        check_output(out, inputs=[out / "adapter.gguf"], overwrite=True, folder=True)
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(f, folder=True, overwrite=True)
    with pytest.raises(OutputExistsError, match="mine"):
        check_output(out, folder=True, overwrite=True, replaceable=lambda p: "holds mine")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_place(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not a writable folder"):
            check_output(ro / "x" / "y.gguf")
    finally:
        ro.chmod(0o700)


def test_a_file_where_a_folder_should_be_is_no_place_to_write(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(OutputPathError, match="not a writable folder"):
        check_output(tmp_path / "f" / "y.gguf")


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_dir_replaces_only_when_asked(tmp_path):
    out = tmp_path / "d"
    atomic_dir(out, {"a.json": b"1"}, overwrite=False)
    assert (out / "a.json").read_bytes() == b"1"
    with pytest.raises(OutputExistsError):
        atomic_dir(out, {"a.json": b"2"}, overwrite=False)
    atomic_dir(out, {"b.json": b"3"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["b.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary left


def test_combined_error_keeps_a_lone_class():
    missing = GGUFFileError("x.gguf: file not found")
    assert type(combined_error("cannot", [missing])) is GGUFFileError
    mixed = combined_error("cannot", [missing, IncompatibleAdapterError("y.gguf: no", ["shape"])])
    assert type(mixed) is IncompatibleAdapterError and mixed.problems == ["x.gguf: file not found", "y.gguf: no", "  shape"]
    assert type(combined_error("cannot", [missing], ["a mismatch"])) is IncompatibleAdapterError
