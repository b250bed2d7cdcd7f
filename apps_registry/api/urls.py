"""Routes of /api/v1/ (included by supervisor_site.urls)."""

from django.urls import path, re_path

from apps_registry.api import views

urlpatterns = [
    path("openapi.json", views.openapi, name="api_openapi"),
    path("environments", views.environments, name="api_environments"),
    path("apps", views.apps, name="api_apps"),
    path("apps/<str:name>", views.app_detail, name="api_app"),
    path("apps/<str:name>/<str:operation>", views.app_operation, name="api_app_operation"),
    re_path(r"^(?P<rest>(?s:.*))$", views.not_found),  # (?s): a path with a newline is JSON 404 too
]
