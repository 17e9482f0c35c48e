"""A real HTTP server on 127.0.0.1 serving pages a test sets (watches, web tools)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HTML = "text/html; charset=utf-8"


@dataclass
class Page:
    body: bytes
    ctype: str = HTML
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None


@dataclass
class Site:
    port: int
    pages: dict[str, Page] = field(default_factory=dict)
    seen: list[dict[str, str]] = field(default_factory=list)  # each request's headers

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        site = type(self).site
        asked = {k.lower(): v for k, v in self.headers.items()}
        site.seen.append(asked)
        page = site.pages.get(self.path, Page(b"not here", "text/plain", 404))
        fresh = (page.etag is not None and asked.get("if-none-match") == page.etag) or (
            page.last_modified is not None and asked.get("if-modified-since") == page.last_modified
        )
        self.send_response(304 if fresh else page.status)
        self.send_header("Content-Type", page.ctype)
        if page.etag is not None:
            self.send_header("ETag", page.etag)
        if page.last_modified is not None:
            self.send_header("Last-Modified", page.last_modified)
        if page.location is not None:
            self.send_header("Location", page.location)
        self.send_header("Content-Length", "0" if fresh else str(len(page.body)))
        self.end_headers()
        if not fresh:
            self.wfile.write(page.body)


@contextmanager
def serving() -> Iterator[Site]:
    """A site on a free port, served from a thread until the block ends."""
    handler = type("SiteHandler", (Handler,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    handler.site = Site(port=httpd.server_address[1])
    thread = threading.Thread(target=lambda: httpd.serve_forever(0.05), daemon=True)
    thread.start()
    try:
        yield handler.site
    finally:
        httpd.shutdown()
        httpd.server_close()
