"""The OpenAI-compatible server (``edge-lora serve``; needs the ``server`` extra: FastAPI, uvicorn)."""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
