"""A real HTTP file server on 127.0.0.1 for the STAC tests: Range requests, ETags, optional auth, byte counts.

Python's `http.server` answers every GET with the whole file; GDAL's /vsicurl/ needs `Range: bytes=a-b` answered
with 206 and exactly those bytes, or it downloads whole files, the very thing the tests must show does not
happen. The server counts the body bytes it sends per path, so a test can assert that a run read only part of
each remote file. `require_header` makes every request without that exact header a 401 (credentials tests).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass
class Served:
    """What the server sent: body bytes per path, and the requests (method, path, range header)."""

    root: Path
    url: str = ""
    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, name: str) -> int:
        return self.bytes_sent.get("/" + name.lstrip("/"), 0)

    def reset(self) -> None:
        with self.lock:
            self.bytes_sent.clear()
            self.requests.clear()


def _handler(served: Served, require_header: tuple[str, str] | None, fail_after: int | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: pytest shows failures, not every request
            pass

        def _file(self) -> Path | None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            path = (served.root / rel).resolve()
            if not str(path).startswith(str(served.root.resolve())) or not path.is_file():
                return None
            return path

        def _authorised(self) -> bool:
            if require_header and self.headers.get(require_header[0]) != require_header[1]:
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            return True

        def _head(self, path: Path, status: int, length: int, extra: dict[str, str]) -> None:
            st = path.stat()
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hashlib.md5(f"{st.st_size}-{st.st_mtime_ns}".encode()).hexdigest()}"')
            self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
            ctype = "application/json" if path.suffix == ".json" else "image/tiff"
            self.send_header("Content-Type", ctype)
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()

        def _request(self, method: str, rng: str | None):
            """Record the request; the file it asks for, or None once refused (401) or not found (404)."""
            with served.lock:
                served.requests.append((method, self.path, rng))
            if not self._authorised():
                return None
            path = self._file()
            if path is None:
                self.send_error(404)
            return path

        def do_HEAD(self) -> None:
            path = self._request("HEAD", None)
            if path is not None:
                self._head(path, 200, path.stat().st_size, {})

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            path = self._request("GET", rng)
            if path is None:
                return
            gets = sum(1 for r in served.requests if r[0] == "GET" and r[1] == self.path)
            if fail_after is not None and gets > fail_after:  # the connection "breaks" mid-scene: 503 from now on
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = path.stat().st_size
            start, end, status, extra = 0, size - 1, 200, {}
            m = RANGE.match(rng or "")
            if m:
                a, b = m.groups()
                if a == "":  # suffix range: the last b bytes
                    start, end = max(0, size - int(b)), size - 1
                else:
                    start, end = int(a), min(size - 1, int(b) if b else size - 1)
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, extra = 206, {"Content-Range": f"bytes {start}-{end}/{size}"}
            length = end - start + 1
            self._head(path, status, length, extra)
            with open(path, "rb") as f:
                f.seek(start)
                body = f.read(length)
            self.wfile.write(body)
            with served.lock:
                served.bytes_sent[self.path.split("?", 1)[0]] += len(body)

    return Handler


@contextmanager
def range_server(root: str | os.PathLike, require_header: tuple[str, str] | None = None,
                 fail_after: int | None = None) -> Iterator[Served]:
    """Serve `root` on a free 127.0.0.1 port for the duration of the block; yields what it served. fail_after:
    each file's GETs after that many answer 503 (a download that breaks in the middle)."""
    served = Served(Path(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served, require_header, fail_after))
    httpd.daemon_threads = True
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
