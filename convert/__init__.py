"""edge-lora's converter: PEFT and MLX-LM LoRA checkpoints to GGUF adapters.

Installed as ``edge_lora_convert`` (source folder ``convert/``). It reads
safetensors without torch; torch is only needed for ``adapter_model.bin``.
"""

from __future__ import annotations

from edge_lora._version import __version__  # one version for both sides

from .converter import ConvertResult, convert  # noqa: E402
from .export_peft import ExportResult, export_peft  # noqa: E402
from .combine import CombineResult, combine  # noqa: E402
from .merge_source import lora_source  # noqa: E402

__all__ = ["CombineResult", "ConvertResult", "ExportResult", "combine", "convert", "export_peft", "lora_source",
           "__version__"]
