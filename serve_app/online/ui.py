"""The web UI: static files shipped inside the package, served by the ingress.

``GET /`` and ``GET /ui`` answer ``index.html``; ``GET /ui/<asset>`` one file of
``serve_app/online/static/``. The UI is plain HTML, CSS and JavaScript with no build step and no
CDN: a fresh clone, an offline cluster and a Pod with no internet serve exactly the files
in the repository (no npm toolchain on the image, nothing fetched by the browser from
elsewhere).

Only names listed in the folder at import time are served (a fixed allow-list, no path
joining of request input), so no request can read outside it.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from starlette.responses import Response

STATIC_DIR = Path(__file__).with_name("static")

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load(static_dir: Path) -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for path in sorted(static_dir.iterdir()) if static_dir.is_dir() else []:
        media_type = _MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            body = path.read_bytes()
            assets[path.name] = Asset(body, media_type, _etag(body))
    return assets


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:16] + '"'


class StaticUi:
    """Answers UI paths (below the app's route prefix) from an in-memory allow-list."""

    def __init__(self, static_dir: Path = STATIC_DIR) -> None:
        self._assets = _load(static_dir)

    @staticmethod
    def handles(path: str) -> bool:
        return path in ("/", "/ui") or path.startswith("/ui/")

    def names(self) -> list[str]:
        return list(self._assets)

    def response(
        self, path: str, root_path: str = "", if_none_match: str | None = None
    ) -> Response:
        """``path`` below the app's route prefix; ``root_path`` the prefix itself, which
        becomes the page's ``<base href>`` so the same files work under any prefix."""
        name = "index.html" if path in ("/", "/ui", "/ui/") else path.removeprefix("/ui/")
        asset = self._assets.get(name)
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        if name == "index.html":
            base_href = html.escape(quote(root_path.rstrip("/") + "/ui/", safe="/"), quote=True)
            body = asset.body.replace(b"__BASE_HREF__", base_href.encode())
            asset = Asset(body, asset.media_type, _etag(body))
        # index.html names its assets without a version: revalidate every load (ETag, a
        # 304 costs no body), so an upgraded service never runs a stale script.
        headers = {
            "cache-control": "no-cache",
            "etag": asset.etag,
            "x-content-type-options": "nosniff",
        }
        if name == "index.html":
            headers["content-security-policy"] = (
                "default-src 'self'; media-src 'self' blob:; img-src 'self' data: blob:; "
                "connect-src 'self'; style-src 'self'; script-src 'self'"
            )
        if if_none_match is not None and if_none_match == asset.etag:
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)
