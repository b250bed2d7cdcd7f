"""``ALLOWED_HOSTS`` plus the one host a trusted proxy vouched for, for one request.

A worker serving an app on its own host (``crm.apps.example.com`` or the app's custom
domain) receives that host as ``X-Forwarded-Host`` from the supervisor, which validated it
against its own ``ALLOWED_HOSTS``, ``APPS_DOMAIN`` and the registry's domains. The worker
cannot list every custom domain in its settings (they change at run time, in the registry),
so the hosting middleware vouches for the forwarded host — only on requests from
``TRUSTED_PROXY_IPS`` that carry the proxy's app-root header — and Django's host check
(``CommonMiddleware``, CSRF's origin check) accepts it for that request alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_vouched: ContextVar[str] = ContextVar("vouched_host", default="")


class VouchedHosts(list):
    """A list Django iterates as ``ALLOWED_HOSTS`` (``validate_host`` does ``any(...)`` over
    it): the configured patterns, then the vouched host if any."""

    def __init__(self, hosts: Iterable[str]):
        super().__init__(hosts)

    def __iter__(self) -> Iterator[str]:
        yield from super().__iter__()
        vouched = _vouched.get()
        if vouched:
            yield vouched


@contextmanager
def vouch(domain: str) -> Iterator[None]:
    """Accept ``domain`` (no port, lower-case) as a host while the block runs."""
    token = _vouched.set(domain)
    try:
        yield
    finally:
        _vouched.reset(token)
