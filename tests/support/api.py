"""One client for the /api/v1/ API: a token issued for a user, JSON in and out.

In process (Django's test client, the default) or over real HTTP against a running
supervisor (``base_url``). With the served OpenAPI ``document`` and a path ``template``, each
response is also checked against what the document declares for it::

    api = ApiClient.for_user(operator)                   # in-process
    status, body = api.call("GET", "/api/v1/apps")
    api = ApiClient(raw_token, base_url=cluster.url)     # a real gunicorn
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from django.contrib.auth.models import User


def issue_token(user: User, name: str = "") -> str:
    """A new API token for ``user``; the raw value (shown once, stored only as a hash)."""
    from apps_registry.models import ApiToken

    _token, raw = ApiToken.issue(user, name=name)
    return raw


class ApiClient:
    def __init__(self, token: str, *, document: dict | None = None, base_url: str = "", timeout: float = 15):
        self.token = token
        self.document = document
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @classmethod
    def for_user(cls, user: User, **options: Any) -> ApiClient:
        return cls(issue_token(user), **options)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(
        self, method: str, url: str, template: str = "", body: Any = None, *, raw: bytes | None = None, **extra: Any
    ) -> tuple[int, Any]:
        """``(status, parsed JSON or None)``; ``raw`` sends bytes as they are (bad bodies)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        status, payload = self._http(method, url, data) if self.base_url else self._local(method, url, data, extra)
        if template:
            from tests.support import schema_check

            assert self.document is not None, "checking against a template needs the OpenAPI document"
            problems = schema_check.response_errors(self.document, template, method, status, payload)
            assert not problems, f"{method} {url} -> {status} {payload}: {problems}"
        return status, payload

    def get(self, url: str, **options: Any) -> tuple[int, Any]:
        return self.call("GET", url, **options)

    def post(self, url: str, body: Any = None, **options: Any) -> tuple[int, Any]:
        return self.call("POST", url, body=body, **options)

    def delete(self, url: str, **options: Any) -> tuple[int, Any]:
        return self.call("DELETE", url, **options)

    def _local(self, method: str, url: str, data: bytes, extra: dict[str, Any]) -> tuple[int, Any]:
        from django.test import Client

        client = Client(HTTP_AUTHORIZATION=self.headers["Authorization"])
        # A GET's data would be its query string: send a body only where there is one.
        body = {"data": data, "content_type": "application/json"} if data or method not in ("GET", "HEAD") else {}
        response = getattr(client, method.lower())(url, **body, **extra)
        return response.status_code, _json(response.content)

    def _http(self, method: str, url: str, data: bytes) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.base_url}{url}",
            data=data or None,
            method=method,
            headers={**self.headers, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _json(error.read())


def _json(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:  # an HTML error page from something in front: keep it readable
        return {"raw": content.decode(errors="replace")[:500]}
