"""Fixtures for the hostile-input suite: an upstream that records every request it gets
(so a test can prove a refused request never reached a worker), users and API tokens."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.processes import free_port


class Recorder(BaseHTTPRequestHandler):
    """A stand-in worker on a real loopback socket: answers 200 and remembers each request."""

    seen: list[dict] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        payload = b"recorded"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture(scope="session")
def recorder():
    """``(url, seen)``: the recording upstream, started once; tests clear ``seen`` themselves."""
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Recorder)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", Recorder.seen
    server.shutdown()
    server.server_close()
