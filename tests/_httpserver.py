"""A local HTTP file server for download tests: Range support, dropped connections, error statuses, and a
request log. Not a test module (leading underscore); test files load it with `load_httpserver()`."""

from __future__ import annotations

import http.server
import re
import threading
import urllib.parse
from dataclasses import dataclass, field

POLL_S = 0.02  # shutdown latency of the serving thread


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    status: int = 200  # another status sends `body` as an error page
    honour_range: bool = True
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drops_left: int = 0  # ... on this many requests
    statuses: list[int] = field(default_factory=list)  # answer these statuses first, one per request


@dataclass(frozen=True)
class Seen:
    path: str
    range: str | None


class FileServer:
    """Serves `routes` on 127.0.0.1; `requests` records every request in order."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_S,), daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve(self, path: str, body: bytes, **options: object) -> Route:
        """Serve `body` at `path` (options as Route's: content_type, drop_after, honour_range ...)."""
        self.routes[path] = Route(body, **options)  # type: ignore[arg-type]
        return self.routes[path]

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        return sum(1 for seen in self.requests if seen.path.split("?")[0] == "/" + path.lstrip("/"))

    def route_for(self, path: str) -> Route | None:
        return self.routes.get(path) or self.routes.get(urllib.parse.urlsplit(path).path)

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)


def _handler_for(server: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            server.record(Seen(self.path, self.headers.get("Range")))
            route = server.route_for(self.path)
            if route is None:
                self._send_simple(404, b"not found")
                return
            if route.statuses:
                self._send_simple(route.statuses.pop(0), b"<html><body>temporarily unavailable</body></html>")
                return
            if route.status != 200:
                self._send_simple(route.status, route.body)
                return
            start, stop = self._range(route)
            if start is not None and start >= len(route.body):
                self._send_simple(416, b"")
                return
            body = route.body[start or 0:stop]
            self.send_response(206 if start is not None else 200)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(body)))
            if start is not None:
                last = start + len(body) - 1
                self.send_header("Content-Range", f"bytes {start}-{last}/{len(route.body)}")
            self.end_headers()
            if route.drops_left and route.drop_after is not None:
                route.drops_left -= 1
                self.wfile.write(body[: route.drop_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _range(self, route: Route) -> tuple[int | None, int | None]:
            """`bytes=N-` or `bytes=N-M` (inclusive M) -> (start, stop); (None, None): the whole body."""
            header = self.headers.get("Range")
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
            if not match or not route.honour_range:
                return None, None
            return int(match.group(1)), int(match.group(2)) + 1 if match.group(2) else None

        def _send_simple(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
