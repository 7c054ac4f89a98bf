"""EXAONE 4.0 (GGUF ``exaone4``): llama-like names with Q/K norms and post-norms, no transforms
(``conversion/exaone.py::Exaone4Model``). Its local/global attention pattern is a base
hyperparameter (the sliding window and which layers slide)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import MODEL_ARCH

from .base import Family


@dataclass(frozen=True)
class Exaone4Family(Family):
    def write_hparams(self, writer: Any, config: Any) -> None:
        if getattr(config, "sliding_window", None) is not None:
            writer.add_sliding_window(config.sliding_window)
            if getattr(config, "layer_types", None):
                writer.add_sliding_window_pattern([t == "sliding_attention" for t in config.layer_types])


EXAONE4 = Exaone4Family(MODEL_ARCH.EXAONE4, ("exaone4",), name_words=("exaone-4", "exaone4"))
