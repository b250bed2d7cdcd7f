"""Routes of /api/v1/ (included by supervisor_site.urls): ninja's (the endpoints,
``openapi.json``, ``docs``), then a JSON 404 for everything else."""

from django.urls import path, re_path

from apps_registry.api import errors
from apps_registry.api.root import api

# (Not unpacked into module names: ``app_name`` here would namespace this whole URLconf.)
_ninja = api.urls
for pattern in _ninja[0]:
    pattern.callback = errors.json_method_not_allowed(pattern.callback)

urlpatterns = [
    path("", errors.not_found),  # before ninja's API root, which answers an HTML 404
    path("", _ninja),
    re_path(r"^(?P<rest>(?s:.*))$", errors.not_found),  # (?s): a path with a newline is JSON 404 too
]
