"""File storage for business modules: each hosted app keeps its uploads in its own folder.

The app is known from the database alias of the current request (``app:<name>``), so one
model field serves every app while app A's files land in ``<storage>/media/A/`` only.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.urls import NoReverseMatch, reverse
from django.utils.deconstruct import deconstructible

from worker_agent.hosting.db_router import APP_ALIAS_PREFIX, current_app_alias


def current_app_name() -> str:
    alias = current_app_alias.get()
    if not alias or not alias.startswith(APP_ALIAS_PREFIX):
        raise RuntimeError("app files are only reachable while serving a hosted app")
    return alias[len(APP_ALIAS_PREFIX) :]


def app_media_root(name: str) -> str:
    return os.path.join(settings.APP_CONFIG.media_dir, name)


@deconstructible
class AppMediaStorage(FileSystemStorage):
    """A FileSystemStorage whose root is the current app's media folder."""

    def __init__(self):
        super().__init__()

    @property
    def base_location(self):
        return app_media_root(current_app_name())

    @property
    def location(self):
        return os.path.abspath(self.base_location)

    @property
    def base_url(self):
        # The app's own URL table knows its root (/apps/<name>/, or / on its own host).
        try:
            return reverse("app_file", kwargs={"path": "x"})[:-1]
        except NoReverseMatch:
            return f"/apps/{current_app_name()}/files/"


def app_media_storage() -> AppMediaStorage:
    return AppMediaStorage()


def attachment_path(instance, filename: str) -> str:
    return f"{instance._meta.model_name}s/{filename}"
