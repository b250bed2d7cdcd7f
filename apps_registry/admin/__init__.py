"""The operator UI: the Django admin's *App supervisor* section and its live status endpoint
(``status``, routed by ``supervisor_site.urls``). Importing the modules below registers the
ModelAdmins on ``admin.site``."""

from apps_registry.admin import applications, audit, dashboard, environments, jobs, queue, site, tokens  # noqa: F401
