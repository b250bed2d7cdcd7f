"""The production switch ``APP_HTTPS``: what an instance served over HTTPS turns on.

One switch rather than Django's half-dozen settings, so that a deployment cannot have the
redirect without the secure cookies, or HSTS without the redirect. Behind a TLS terminator the
scheme comes from ``X-Forwarded-Proto``, believed only from ``TRUSTED_PROXY_IPS``
(``supervisor_site.forwarded`` sets the request's scheme from it). Django's own
``SECURE_PROXY_SSL_HEADER`` is deliberately left unset: it would believe that header from any
client, which could then skip the redirect to HTTPS.
"""

from __future__ import annotations

# A year, as HSTS preload lists require; sub-domains included (per-app origins are served
# over HTTPS too).
HSTS_SECONDS = 365 * 24 * 3600
# Probes and scrapes reach the instance on its private address over plain HTTP: answered as
# they are, never redirected (paths without their leading slash, as Django matches them).
REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]


def https_settings(enabled: bool) -> dict[str, object]:
    """The Django settings ``APP_HTTPS`` decides (all off when it is false)."""
    return {
        "SECURE_SSL_REDIRECT": enabled,
        "SECURE_REDIRECT_EXEMPT": REDIRECT_EXEMPT if enabled else [],
        "SECURE_HSTS_SECONDS": HSTS_SECONDS if enabled else 0,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": enabled,
        "SECURE_HSTS_PRELOAD": enabled,
        "SESSION_COOKIE_SECURE": enabled,
        "CSRF_COOKIE_SECURE": enabled,
    }
