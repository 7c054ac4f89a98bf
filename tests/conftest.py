"""Shared fixtures: each tiny case's model and GGUF base, built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tiny_models import TinyCase


@pytest.fixture(scope="session", autouse=True)
def _engine_verdict_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The engine's smoke-test verdicts go to a fresh folder: the suite takes them itself
    (and its subprocesses inherit the variable) instead of trusting the user's cache."""
    os.environ["EDGE_LORA_CACHE_DIR"] = str(tmp_path_factory.mktemp("edge-lora-cache"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyCase]:
    """``tiny(case)`` -> the cached :class:`TinyCase` for ``case`` (see ``tiny_models.CASES``).

    The model is shared by every test in the session: wrap ``fresh_model()``, not
    ``model``, when building a PEFT adapter.
    """
    # imported here: tests/unit runs without torch and transformers
    from llama_cpp_base import require_vendored_llama_cpp, write_llama_cpp_base
    from tiny_models import BASE_ARCH, TinyCase, make_tiny_model, uses_llama_cpp_base, write_gguf_base

    cache: dict[str, TinyCase] = {}

    def get(case: str) -> TinyCase:
        if case not in cache:
            model = make_tiny_model(case)
            folder = tmp_path_factory.mktemp(f"tiny-{case}")
            base_path = folder / "base-f32.gguf"
            if uses_llama_cpp_base(case):
                vendor = require_vendored_llama_cpp()
                model.save_pretrained(folder / "hf")
                write_llama_cpp_base(folder / "hf", base_path, vendor)
            else:
                write_gguf_base(model, base_path, arch=BASE_ARCH.get(case))
            cache[case] = TinyCase(case, model, base_path)
        return cache[case]

    return get
