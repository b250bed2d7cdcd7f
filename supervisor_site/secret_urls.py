"""URLs that carry a password (``redis://user:password@host``), shown without it.

Every message that names such a URL (a configuration error, a log line) goes through
``masked``: the Redis URLs hold each role's Redis password (docs/security.md)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def masked(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (also when the URL is
    otherwise malformed: the text between ``//`` and the last ``@`` is user info)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    scheme, sep, rest = url.partition("//")
    if sep and "@" in rest:
        userinfo, host = rest.rsplit("@", 1)
        if ":" in userinfo:
            return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{host}"
    return url
