"""Bearer-token authentication and the permission check for the API. Tokens are stored as
SHA-256 hashes only."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django.utils import timezone
from ninja.security.base import AuthBase

from apps_registry.models import ApiToken

# last_used_at is written at most this often per token, so reads cost no write.
_TOUCH_EVERY = dt.timedelta(seconds=60)


class AuthError(Exception):
    """The request carries no usable token; the message says why (answered 401)."""


class PermissionMissing(Exception):
    """The token's user lacks a permission the request needs (answered 403)."""


def authenticate(request: HttpRequest) -> AbstractBaseUser:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if not header:
        raise AuthError("authentication required: send Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not raw.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    token = (
        ApiToken.objects.select_related("user")
        .filter(token_hash=ApiToken.hash(raw.strip()), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        raise AuthError("invalid or revoked token")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


class TokenAuth(AuthBase):
    """ninja's auth for one operation: the bearer token, then the admin permissions the
    operation needs. Both are decided before the body is read, so a caller without the right
    gets 401/403 whatever it sent."""

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __init__(self, *perms: str):
        super().__init__()
        self.perms = perms

    def __call__(self, request: HttpRequest) -> AbstractBaseUser:
        user = authenticate(request)
        missing = [perm for perm in self.perms if not user.has_perm(perm)]
        if missing:
            raise PermissionMissing(f"permission denied: needs {', '.join(missing)}")
        return user
