"""URL routes. The supervisor's admin and API exist in standalone and supervisor modes;
/apps/<name>/ is served in-process (standalone, worker) or proxied (supervisor)."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path

from supervisor_site import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]

if settings.APP_MODE != "worker":
    from apps_registry.admin import logs, status

    urlpatterns += [
        # Before the admin's own routes, which would answer 404 for it.
        path("admin/app-supervisor/status.json", status.status, name="appsup_status"),
        path("admin/app-supervisor/logs.json", logs.logs, name="appsup_logs"),
        path("admin/", admin.site.urls),
        path("api/v1/", include("apps_registry.api.urls")),
    ]
    # Unknown /admin/... URLs answer inside the admin rather than as a bare "Not Found".
    handler404 = "apps_registry.admin.site.not_found"

if settings.APP_MODE == "supervisor":
    # Everything under /apps/ goes to the proxy, which validates the path and the app name
    # itself (a stricter check than a URL pattern can express).
    from apps_registry.proxy.hosts import domain_check
    from apps_registry.proxy.view import AppProxyView

    urlpatterns += [
        re_path(r"^apps(?:/|$)", AppProxyView.as_view(), name="app_proxy"),
        # Caddy's on-demand TLS asks here before it obtains a certificate (docs/operations.md).
        path("internal/domain-check", domain_check, name="domain_check"),
    ]
