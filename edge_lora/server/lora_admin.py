"""Loading and unloading adapters at runtime: ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter`` (vLLM's names and bodies), from ``--adapter-dir`` folders only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends

from .errors import ApiError
from .schemas import LoadAdapterRequest, UnloadAdapterRequest
from .service import Service


def router(service: Service, auth: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(auth)])
    rt, settings = service.rt, service.settings

    @api.post("/v1/load_lora_adapter")
    async def load_adapter(req: LoadAdapterRequest) -> dict:
        if not settings.adapter_dirs:
            raise ApiError(403, "loading adapters at runtime is off: start the server with --adapter-dir DIR",
                           param="lora_path", kind="permission_error")
        if req.lora_name == settings.model_id or req.lora_name in rt.adapters:
            raise ApiError(400, f"a model named {req.lora_name!r} is already loaded (unload it first)",
                           param="lora_name")
        path = allowed_path(req.lora_path, settings.adapter_dirs)
        info = await service.call(rt.load_adapter, req.lora_name, path, req.scale)
        return {"status": "ok", "lora_name": info.name, "lora_path": str(info.path), "ranks": info.ranks}

    @api.post("/v1/unload_lora_adapter")
    async def unload_adapter(req: UnloadAdapterRequest) -> dict:
        if req.lora_name not in rt.adapters:
            raise ApiError(404, f"no adapter named {req.lora_name!r} is loaded", param="lora_name",
                           code="model_not_found")
        await service.call(rt.unload_adapter, req.lora_name)
        return {"status": "ok", "lora_name": req.lora_name}

    return api


def allowed_path(raw: str, dirs: tuple[Path, ...]) -> Path:
    """Resolve ``raw`` (absolute, or relative to an allowed folder) to a file inside one of ``dirs``.

    Symlinks are resolved first, so neither ``..`` nor a link can lead out of the folders.
    Raises :class:`ApiError` 403 outside them, 400 for a missing file."""
    p = Path(raw)
    roots = [d.resolve() for d in dirs]
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for c in candidates:
        real = c.resolve()
        if any(real.is_relative_to(r) for r in roots):
            if not real.is_file():
                raise ApiError(400, f"{raw}: no such adapter file in the allowed folders", param="lora_path")
            return real
    raise ApiError(403, f"{raw}: outside the allowed adapter folders", param="lora_path", kind="permission_error")
