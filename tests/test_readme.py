"""README's CLI reference is what `--help` prints."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from edge_lora.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("command", ["convert", "merge", "combine", "export", "inspect", "run", "chat", "serve", "doctor"])
def test_usage_block_matches_help(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps usage to the terminal width
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    usage = out.getvalue().split("\n\n")[0].strip()
    assert usage in README, f"README's usage of `edge-lora {command}` differs from --help:\n{usage}"
