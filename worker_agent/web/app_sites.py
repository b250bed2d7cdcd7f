"""Each hosted app's own admin site and URLs, used as ``request.urlconf`` under ``/apps/<name>/``.

An app's URL table holds only its own pages: ``<root>admin/`` (auth plus the modules the
app enables), ``<root>`` (redirects to the admin) and ``<root>files/<path>`` (the app's
uploads, for signed-in staff), where the root is ``/apps/<name>/`` (path mode) or ``/`` (the
app on its own host, ``middleware.py``). The supervisor's admin and API are not reachable
through it, whatever the process's mode.
"""

from __future__ import annotations

import mimetypes
import threading
from pathlib import Path

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.contrib.auth.views import redirect_to_login
from django.http import FileResponse, Http404, HttpRequest
from django.urls import path
from django.utils.html import format_html
from django.views.generic import RedirectView

from supervisor_site import catalogue
from worker_agent.modules.storage import app_media_root


class HostedAdminSite(admin.AdminSite):
    """The admin of one hosted app: its users and groups plus its enabled business modules."""

    def __init__(self, app_name: str, title: str, modules: frozenset[str]):
        super().__init__(name=f"app_{app_name}")
        self.app_name = app_name
        # Which environment serves this admin, small beside the title (operators and support
        # asking "which one am I on?"; the response's X-App-Environment says it too).
        self.site_header = format_html(
            '{} <small class="appsup-served-by" style="font-size:0.55em;opacity:0.7;font-weight:normal"'
            ' title="environment serving this app">on {}</small>',
            title,
            settings.APP_CONFIG.environment_name,
        )
        self.site_title = title
        self.index_title = f"{title}: administration"
        self.site_url = None  # no "view site" link: the admin is the app
        self.register(User, UserAdmin)
        self.register(Group, GroupAdmin)
        for module in sorted(modules):
            catalogue.admin_module(module).register(self)


class AppUrlConf:
    """A URL configuration object (Django accepts any object with ``urlpatterns``)."""

    def __init__(self, app_name: str, urlpatterns: list):
        self.app_name = app_name
        self.urlpatterns = urlpatterns


def _download_view(app_name: str, root: str):
    login_url = f"{root}admin/login/"

    def download(request: HttpRequest, path: str) -> FileResponse:
        if not (request.user.is_active and request.user.is_staff):
            return redirect_to_login(request.get_full_path(), login_url)
        root = Path(app_media_root(app_name)).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise Http404("No such file")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(open(target, "rb"), as_attachment=True, filename=target.name, content_type=content_type)  # noqa: SIM115

    return download


def build_urlconf(app_name: str, title: str, modules: frozenset[str], root: str = "") -> AppUrlConf:
    """The app's URLs under ``root`` (``/apps/<name>/`` by default, or ``/``)."""
    root = root or f"/apps/{app_name}/"
    site = HostedAdminSite(app_name, title, modules)
    prefix = root.lstrip("/")
    return AppUrlConf(
        app_name,
        [
            path(f"{prefix}admin/", site.urls),
            path(f"{prefix}files/<path:path>", _download_view(app_name, root), name="app_file"),
            path(prefix, RedirectView.as_view(url=f"{root}admin/", permanent=False), name="app_home"),
        ],
    )


_cache: dict[tuple[str, str], tuple[tuple, AppUrlConf]] = {}
_cache_lock = threading.Lock()


def urlconf_for(app_name: str, title: str, modules: frozenset[str], root: str = "") -> AppUrlConf:
    """The app's URL configuration under ``root``, rebuilt only when its title or modules change."""
    key = (title, modules)
    slot = (app_name, root)
    cached = _cache.get(slot)
    if cached and cached[0] == key:
        return cached[1]
    with _cache_lock:
        cached = _cache.get(slot)
        if cached and cached[0] == key:
            return cached[1]
        urlconf = build_urlconf(app_name, title, modules, root)
        _cache[slot] = (key, urlconf)
        return urlconf
