"""The web page at ``/``: the router's own files from ``router/web/``, and nothing else.

The page holds no data: it reads everything through the API, with the key the person types in.
So ``/`` and its files need no key, which the page could not send when loading them anyway
(``app.py`` lets ``PAGE_ENDPOINTS`` through without one, nor asks a plugin's
``authenticate``; an unknown name under ``/web/`` is a 404 that says nothing more). They keep
the ``Host`` check, though: a DNS-rebinding page (``access.py``) that got the router's page
served under its own origin would share that origin with it, and could read the key typed
into it.

What a browser loads from here is safe on a router with a key, when models, log lines and
answers are hostile text: a Content-Security-Policy of ``default-src 'self'`` (no inline
script, nothing from elsewhere), no framing, no content sniffing; the script writes text only
with ``textContent``. A file is served only if the package ships it in ``router/web/`` under a
name with a known type: the names are read once, at start-up, and a request's name is looked up
among them, never joined to a path, so no ``..`` can reach any other file.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

STATIC_PREFIX = "/web/"
INDEX_FILE = "index.html"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new router version's files, not yesterday's
}


@dataclass(frozen=True)
class PageFile:
    """One file of the page, read once."""

    content: bytes
    media_type: str

    def response(self) -> Response:
        return Response(self.content, headers={"Content-Type": self.media_type, **SECURITY_HEADERS})


def page_files() -> dict[str, PageFile]:
    """The files the package ships in ``router/web/``, by name (plain files of known types)."""
    folder = importlib.resources.files("router").joinpath("web")
    files = {}
    for entry in folder.iterdir():
        media_type = MEDIA_TYPES.get("." + entry.name.rsplit(".", 1)[-1])
        if entry.is_file() and "." in entry.name and media_type is not None:
            files[entry.name] = PageFile(entry.read_bytes(), media_type)
    return files


FILES = page_files()
# The routes served without a key (the Host check stays). By endpoint, not by path: a POST to
# a page's path is some other route's (forwarded to a model), and needs the key.
PAGE_ENDPOINTS = frozenset({"page", "page_file"})


def register_page(app: QuartTrio) -> None:
    """Serve the page at ``/`` and its files under ``/web/``."""

    @app.get("/", endpoint="page")
    async def page() -> Response:
        return FILES[INDEX_FILE].response()

    @app.get(STATIC_PREFIX + "<name>", endpoint="page_file")
    async def page_file(name: str) -> Response:
        found = FILES.get(name)
        if found is None:
            raise NotFound(f"the page has no file {name[:100]!r}")
        return found.response()
