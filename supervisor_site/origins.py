"""What an environment's URL may be: an http(s) origin — scheme, host, optional port — and
nothing else. A path, query, fragment or user info would let a registration point the proxy at
any page of any host (the worker's /metrics, another internal service); the worker refuses such
a URL at start-up and the supervisor at ingest, with the same rule."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_problem(url: str) -> str:
    """Why ``url`` is not an http(s) origin ('' when it is one)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must look like http://host[:port] or https://host[:port]"
    if parts.username is not None or parts.password is not None:
        return "must not carry user info"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        return "must be an origin only: no path, query or fragment"
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return "must not contain white space or control characters"
    return ""
