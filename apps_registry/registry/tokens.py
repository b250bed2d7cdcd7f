"""API tokens issued and revoked, each with its audit entry naming who did it.

The raw token is returned once by ``issue_api_token`` and never stored (``ApiToken`` keeps its
SHA-256). The audit entry's text names the token by its prefix and owner, never by its value."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps_registry.models import ApiToken
from apps_registry.registry.requests import audit


def describe(token: ApiToken) -> str:
    label = f" ({token.name})" if token.name else ""
    return f"token {token.prefix}… of {token.user.get_username()}{label}"


@transaction.atomic
def issue_api_token(
    owner: AbstractBaseUser, *, name: str = "", actor: AbstractBaseUser | None = None, via: str = "cli", note: str = ""
) -> tuple[ApiToken, str]:
    """A new token for ``owner``; ``actor`` is who asked (None: nobody known, then ``note``
    says what is, such as the account that ran the command)."""
    token, raw = ApiToken.issue(owner, name=name[:100])
    detail = describe(token) + (f"; {note}" if note else "")
    audit("api_token_issued", user=actor, error=detail, via=via)
    return token, raw


@transaction.atomic
def revoke_api_tokens(tokens: QuerySet[ApiToken], *, actor: AbstractBaseUser | None, via: str = "admin") -> int:
    """Revoke those of ``tokens`` not revoked yet, one audit entry each; returns how many."""
    pending = list(tokens.filter(revoked_at__isnull=True).select_for_update(of=("self",)).select_related("user"))
    if not pending:
        return 0
    ApiToken.objects.filter(pk__in=[t.pk for t in pending], revoked_at__isnull=True).update(revoked_at=timezone.now())
    for token in pending:
        audit("api_token_revoked", user=actor, error=describe(token), via=via)
    return len(pending)
