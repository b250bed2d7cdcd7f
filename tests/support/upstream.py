"""A stand-in worker in a process of its own (``python -m tests.support.upstream --port P
--label L``), so that a test can SIGKILL or SIGSTOP it as it would a real worker's gunicorn.

It answers any path (the proxy sends ``/apps/<name>/…``) by its last segment:
- ``slow?ms=N`` — waits N ms, then answers like the default;
- ``html?mib=N`` — an HTML page of N MiB with its Content-Length, written 64 KiB at a time;
- ``stats`` — the requests in flight now and the most at once, per app, as JSON;
- anything else — JSON naming the server, method and path.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_BLOCK = b"<p>" + b"x" * (64 * 1024 - 8) + b"</p>\n"  # 64 KiB of HTML


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body in separate writes: no 40 ms Nagle stall

    def log_message(self, *args) -> None:
        pass

    def _json(self, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        segments = parts.path.strip("/").split("/")
        app = segments[1] if len(segments) > 1 else ""
        action = segments[-1]
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        server: Upstream = self.server  # type: ignore[assignment]
        if action == "stats":
            with server.lock:
                return self._json({"in_flight": dict(server.in_flight), "max_in_flight": dict(server.max_in_flight)})
        with server.lock:
            server.in_flight[app] = server.in_flight.get(app, 0) + 1
            server.max_in_flight[app] = max(server.max_in_flight.get(app, 0), server.in_flight[app])
        try:
            if action == "slow":
                time.sleep(int(query.get("ms", ["100"])[0]) / 1000)
            if action == "html":
                blocks = int(query.get("mib", ["1"])[0]) * 16
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(blocks * len(_BLOCK)))
                self.end_headers()
                for _ in range(blocks):
                    self.wfile.write(_BLOCK)
                return
            self._json({"server": server.label, "method": self.command, "path": self.path})
        finally:
            with server.lock:
                server.in_flight[app] -= 1

    do_GET = do_HEAD = do_POST = do_OPTIONS = do_PUT = do_DELETE = _handle


class Upstream(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restarted on the same port after a SIGKILL

    def __init__(self, port: int, label: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.label = label
        self.lock = threading.Lock()
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    Upstream(args.port, args.label).serve_forever()


if __name__ == "__main__":
    main()
