"""The named test users, so that tests say who acts instead of building users by hand.

=================  ========================================================================
``operator``       staff with every permission of the app (``apps_registry``): can do all an
                   operator does, yet is not a superuser, so a missing permission check shows
``staff_no_perms`` staff (may log in to the admin), no permissions at all
``viewer``         staff with the ``view_*`` permissions of the app only
=================  ========================================================================

tests/conftest.py exposes each as a fixture of the same name (database access needed).
Every user's password is ``PASSWORD`` (tests/settings.py hashes with MD5, so logins are fast).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import Permission, User

APP_LABEL = "apps_registry"
PASSWORD = "pw-test-user"
OPERATOR = "operator"
STAFF_NO_PERMS = "staff_no_perms"
VIEWER = "viewer"


def app_permissions(prefix: str = "") -> list[Permission]:
    """The app's permissions, optionally only those whose codename starts with ``prefix``."""
    permissions = Permission.objects.filter(content_type__app_label=APP_LABEL)
    if prefix:
        permissions = permissions.filter(codename__startswith=prefix)
    return list(permissions)


def create_user(
    username: str, permissions: Iterable[Permission | str] = (), *, staff: bool = True, superuser: bool = False
) -> User:
    """A user with the given permissions (objects, or codenames of the app's permissions)."""
    if superuser:
        return User.objects.create_superuser(username, password=PASSWORD)
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    resolved = [
        p if isinstance(p, Permission) else Permission.objects.get(codename=p, content_type__app_label=APP_LABEL)
        for p in permissions
    ]
    user.user_permissions.add(*resolved)
    return user


def operator() -> User:
    return create_user(OPERATOR, app_permissions())


def staff_no_perms() -> User:
    return create_user(STAFF_NO_PERMS)


def viewer() -> User:
    return create_user(VIEWER, app_permissions("view_"))
