"""The web page ``edge-lora serve`` shows at ``/`` (off with ``--no-web``): static files shipped in
the package (``web/``: plain JavaScript modules and CSS, nothing fetched from elsewhere), which
talk to the server's own OpenAI-compatible API as any client does. The page itself needs no key;
with ``--api-key`` it asks for one and sends it on each API call."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

#: the page's files
STATIC = Path(__file__).resolve().parent / "web"
#: what each served file is
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
#: the page may load nothing from elsewhere, and no script but its own files
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def router() -> APIRouter:
    api = APIRouter()
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in TYPES}

    def send(name: str) -> FileResponse:
        p = files[name]
        return FileResponse(p, media_type=TYPES[p.suffix], headers={
            "Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    @api.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return send("index.html")

    @api.get("/web", include_in_schema=False)
    async def web_root() -> RedirectResponse:
        return RedirectResponse("/")

    for name in files:
        api.add_api_route(f"/web/{name}", (lambda n: (lambda: send(n)))(name), methods=["GET"],
                          include_in_schema=False)
    return api
