"""The operator UI: the Django admin's *App supervisor* section and its live status endpoint."""

from apps_registry.admin import applications  # noqa: F401  (registers the ModelAdmins)
