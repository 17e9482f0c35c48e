"""A directory served over HTTP on 127.0.0.1 -- what ``python3 -m http.server`` does --
for watches in tests: a page is a file; write it again and the next check sees it."""

from __future__ import annotations

import functools
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._mtime = time.time()
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def write(self, name: str, text: str) -> str:
        """Write the page; its Last-Modified moves on by two seconds at least (the
        server answers a conditional request with 304 for a date not older than the
        file's, to the second). Its URL."""
        path = self.root / name
        path.write_text(text)
        self._mtime = max(self._mtime + 2, time.time())
        os.utime(path, (self._mtime, self._mtime))
        return self.url(name)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def listing(*items: str) -> str:
    """A page of listings: one ``<li class="item">`` each, and an ad that changes."""
    lis = "".join(f'<li class="item">{item}</li>' for item in items)
    return f'<html><body><div class="ad">{time.time()}</div><ul>{lis}</ul></body></html>'
