"""The local server (``edge-lora serve``; needs the ``server`` extra: FastAPI, uvicorn)."""

from .app import create_app
from .service import ServerSettings

__all__ = ["ServerSettings", "create_app"]
