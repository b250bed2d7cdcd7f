"""Environment identities (docs/security.md, "Identity"): binding a name's key, recording the
messages refused for it, the operator's approval and re-binding. Every change is audited.

Which message is genuine is decided before this (``apps_registry.control.identity``): here
only the registry's state changes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db import models
from django.utils import timezone

from apps_registry import signing
from apps_registry.models import AuditEntry, Environment
from apps_registry.registry import outbox
from apps_registry.registry.requests import audit

# Refusals for one environment reach the audit at most this often (a flood of forged entries
# must not flood the trail); the admin shows the newest and a count in between.
IDENTITY_AUDIT_EVERY = dt.timedelta(minutes=10)


class NothingToRebind(ValueError):
    """No refused key is on record for this environment."""


def bind_environment_keys(bindings: Mapping[str, str], at: dt.datetime | None = None) -> list[str]:
    """Bind rows that have no key yet (from before identities) to the key their first signed
    message carried; a bound key is never replaced here. Returns the names bound."""
    at = at or timezone.now()
    bound = []
    for name, public_key in bindings.items():
        if Environment.objects.filter(name=name, public_key="").update(public_key=public_key, key_bound_at=at):
            audit(
                "environment_key_bound",
                environments=[name],
                via="worker",
                error=f"bound to key {signing.fingerprint(public_key)}",
            )
            bound.append(name)
    return bound


def record_identity_refusals(refusals: Sequence[dict], at: dt.datetime | None = None) -> int:
    """Note refused messages on their environments' rows (shown in the admin; the newest key
    is what a re-bind would bind). Each refusal: ``name``, ``reason`` (one line, e.g.
    "conflicting registration for env_a from host h (key 1a2b…)"), ``key`` (the key it was
    signed with, or ""), ``host``. The audit gets one entry per environment and
    IDENTITY_AUDIT_EVERY, or at once for a key not seen refused before. Names with no row
    are not recorded (forged names would otherwise grow the registry). Returns audit entries
    written."""
    at = at or timezone.now()
    newest: dict[str, dict] = {}
    # The newest refusal that names a key (a conflicting claim) matters most: its key is what a
    # re-bind would bind, and a key not seen refused before is audited at once.
    keyed: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for refusal in refusals:
        newest[refusal["name"]] = refusal
        if refusal.get("key"):
            keyed[refusal["name"]] = refusal
        counts[refusal["name"]] = counts.get(refusal["name"], 0) + 1
    audited = 0
    for env in Environment.objects.filter(name__in=list(newest)):
        refusal = keyed.get(env.name) or newest[env.name]
        key = refusal.get("key") or ""
        last = (
            AuditEntry.objects.filter(action="environment_message_refused", environments=[env.name])
            .values_list("at", flat=True)
            .first()
        )
        due = last is None or at - last >= IDENTITY_AUDIT_EVERY or bool(key and key != env.refused_key)
        Environment.objects.filter(pk=env.pk).update(
            refused_key=key or env.refused_key,
            refused_host=str(refusal.get("host") or "")[:255],
            refused_reason=str(refusal["reason"])[:200],
            refused_at=at,
            refused_count=models.F("refused_count") + counts[env.name],
        )
        if due:
            more = f" ({counts[env.name]} refused in this batch)" if counts[env.name] > 1 else ""
            audit(
                "environment_message_refused",
                environments=[env.name],
                via="worker",
                result=AuditEntry.Result.ERROR,
                error=f"{refusal['reason']}{more}",
            )
            audited += 1
    return audited


def approve_environment(env: Environment, user: AbstractBaseUser | None = None) -> None:
    """An operator approves an environment pending approval: it is enabled (apps may be placed
    there, the proxy routes to it)."""
    Environment.objects.filter(pk=env.pk).update(approved=True, enabled=True)
    env.approved = env.enabled = True
    audit("environment_approved", user=user, environments=[env.name])
    outbox.publish_environment(env)


def rebind_environment(env: Environment, user: AbstractBaseUser | None = None) -> str:
    """Bind the environment to the key its last refused message carried (a worker whose key
    was replaced, a rebuilt host); the old key's messages are refused from now on. Returns the
    new key's fingerprint; NothingToRebind if no refused key is on record."""
    env.refresh_from_db()
    if not env.refused_key or env.refused_key == env.public_key:
        raise NothingToRebind(f"no other key has claimed {env.name}")
    old, new = env.public_key, env.refused_key
    now = timezone.now()
    Environment.objects.filter(pk=env.pk).update(
        public_key=new,
        key_bound_at=now,
        refused_key="",
        refused_host="",
        refused_reason="",
        refused_count=0,
        refused_at=None,
    )
    env.public_key, env.key_bound_at = new, now
    env.refused_key = env.refused_host = env.refused_reason = ""
    audit(
        "environment_rebound",
        user=user,
        environments=[env.name],
        error=f"key {signing.fingerprint(old) if old else 'none'} replaced by {signing.fingerprint(new)}",
    )
    return signing.fingerprint(new)
