"""The interactive API page at ``/docs``: Swagger UI, served from a pinned package, no CDN.

The assets come from the ``swagger-ui-bundle-v2`` wheel (requirements-serve.txt), which
ships Swagger UI's own ``swagger-ui-dist`` build unchanged. The page needs only three of
its files (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``index.css``); Dockerfile.slim
drops the rest. The initializer is a file of ours rather than an inline script, so the page
works under a content-security policy that forbids inline code.

``/docs``, ``/docs/...`` and ``/openapi.json`` stay open under ``API_KEYS``: the page's
Authorize button takes the bearer key and sends it with "Try it out".
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.web.routing import Endpoint

STATIC = Path(__file__).with_name("static")


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "docs.html", media_type="text/html")


ENDPOINTS = [Endpoint("/docs", "GET", page, "This page", response_media_type="text/html", open=True, in_schema=False)]
# Static assets under /docs/ are open too (service.web.middleware).
MOUNTS = [
    Mount("/docs/swagger-ui", StaticFiles(directory=Path(str(swagger_ui_path))), name="swagger-ui"),
    Mount("/docs", StaticFiles(directory=STATIC), name="docs-static"),
]
