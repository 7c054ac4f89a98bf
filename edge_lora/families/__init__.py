"""What a model family is: one module per family (its Hugging Face names, the transforms llama.cpp's
base converter applies, both directions), the registry by GGUF arch and HF ``model_type``
(:mod:`.registry`), and the checks of a base's hyperparameters (:mod:`.base_check`)."""

from .base import Family
from .registry import FAMILIES, adapter_archs, family_for, supported_names

__all__ = ["FAMILIES", "Family", "adapter_archs", "family_for", "supported_names"]
