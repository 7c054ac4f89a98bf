"""Loading and unloading adapters at runtime: ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter`` (vLLM's names and bodies), from ``--adapter-dir`` folders only.
``lora_path`` names a GGUF adapter, or a PEFT / MLX-LM checkpoint (folder, config or weights
file), converted on first load by the converter ``serve`` gives (:attr:`ServerSettings.checkpoints`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends

from ..errors import CheckpointError, MissingDependencyError
from ..formats.gguf_file import is_checkpoint
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
        extra: dict = {}
        if is_checkpoint(path):
            if settings.checkpoints is None:
                raise ApiError(400, f"{req.lora_path}: is a training checkpoint, and this server converts none; "
                               "convert it with edge-lora convert and load the .gguf", param="lora_path")
            try:
                done = await service.call(settings.checkpoints.gguf_for, path)
            except (CheckpointError, MissingDependencyError) as exc:
                raise ApiError(400, str(exc), param="lora_path") from exc
            path = done.path
            extra = {"converted_from": [str(f) for f in done.source], "cached": done.cached, "notes": done.notes}
        info = await service.call(rt.load_adapter, req.lora_name, path, req.scale,
                                  template_kwargs=req.chat_template_kwargs)
        return {"status": "ok", "lora_name": info.name, "lora_path": str(info.path), "ranks": info.ranks, **extra}

    @api.get("/v1/adapter_files")
    async def adapter_files() -> dict:
        """What ``--adapter-dir`` holds that ``load_lora_adapter`` takes (edge-lora's extension,
        for the web page's picker): GGUF adapters and checkpoint folders, by path relative to
        their folder."""
        return {"object": "list", "enabled": bool(settings.adapter_dirs),
                "data": [e for d in settings.adapter_dirs for e in _listing(d)]}

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
    A folder (a checkpoint's) is allowed as a file is. Raises :class:`ApiError` 403 outside
    them, 400 for a missing path."""
    p = Path(raw)
    roots = [d.resolve() for d in dirs]
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for c in candidates:
        real = c.resolve()
        if any(real.is_relative_to(r) for r in roots):
            if not real.exists():
                raise ApiError(400, f"{raw}: no such adapter file or checkpoint folder in the allowed folders",
                               param="lora_path")
            return real
    raise ApiError(403, f"{raw}: outside the allowed adapter folders", param="lora_path", kind="permission_error")


def _listing(folder: Path) -> list[dict]:
    """The adapters in ``folder`` (not below it): ``.gguf`` files, and folders holding an
    ``adapter_config.json`` (checkpoints, converted on load)."""
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if p.is_file() and p.suffix == ".gguf":
            out.append({"path": p.name, "kind": "gguf", "bytes": p.stat().st_size, "dir": str(folder)})
        elif p.is_dir() and (p / "adapter_config.json").is_file():
            out.append({"path": p.name, "kind": "checkpoint", "bytes": sum(f.stat().st_size for f in p.iterdir()
                                                                            if f.is_file()), "dir": str(folder)})
    return out
