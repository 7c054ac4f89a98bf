"""The version of edge-lora: the one definition (pyproject.toml reads it as its dynamic version)."""

__version__ = "0.1.0"
