"""Environments: registration and heartbeats from their agents, and the operator's enable,
disable and forget."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from apps_registry import signing
from apps_registry.models import AppEnvironment, Environment
from apps_registry.registry import outbox
from apps_registry.registry.bulk import chunks, per_row
from apps_registry.registry.requests import audit


def register_environment(
    *,
    name: str,
    url: str,
    proxy_url: str = "",
    version: str = "",
    host: str = "",
    pid: int | None = None,
    apps_running: Sequence[str] = (),
    at: dt.datetime | None = None,
    public_key: str = "",
) -> Environment:
    """A worker announced itself (start-up or heartbeat): create or refresh its record.

    ``public_key`` is the key its message was signed with, already checked by the caller
    (``control.identity``). A new name is bound to it (trust on first use) and, with
    ENVIRONMENT_APPROVAL, created disabled and pending approval; a row without a key (from
    before identities) is bound to it; a bound key is never replaced here (only
    ``rebind_environment`` does)."""
    at = at or timezone.now()
    fields = {
        "url": url,
        "proxy_url": proxy_url,
        "version": version,
        "host": host,
        "pid": pid,
        "apps_running": sorted(apps_running),
        "last_heartbeat": at,
        "stopped_at": None,
    }
    approved = not settings.APP_CONFIG.environment_approval
    created_fields = {**fields, "first_seen": at, "approved": approved, "enabled": approved}
    if public_key:
        created_fields.update(public_key=public_key, key_bound_at=at)
    env, created = Environment.objects.get_or_create(name=name, defaults=created_fields)
    if created:
        audit(
            "environment_registered",
            app_name="",
            environments=[name],
            via="worker",
            error=_bound_text(public_key, host) + ("" if approved else "; pending approval"),
        )
    else:
        if public_key and not env.public_key:
            fields.update(public_key=public_key, key_bound_at=at)
            audit("environment_key_bound", environments=[name], via="worker", error=_bound_text(public_key, host))
        Environment.objects.filter(pk=env.pk).update(**fields)
        for key, value in fields.items():
            setattr(env, key, value)
    outbox.publish_environment(env)
    return env


def _bound_text(public_key: str, host: str) -> str:
    if not public_key:
        return ""
    return f"bound to key {signing.fingerprint(public_key)}" + (f" of host {host}" if host else "")


# A heartbeat that changes nothing but ``last_heartbeat``, by less than this, is not written:
# liveness reads the lease in Redis, the database's beat is only its fallback.
HEARTBEAT_RESOLUTION = dt.timedelta(seconds=1)
# How far ahead of now a time may be and still be believed (clock noise between hosts). A
# later one (a clock jump, a forged stream entry) must never count as a sighting: it would pin
# an environment online for ever. Ingest clamps to now; a beat already recorded further in the
# future than this is overwritten by the next real one.
CLOCK_TOLERANCE = dt.timedelta(seconds=5)
_DESCRIPTIVE = ("url", "proxy_url", "version", "host", "pid", "apps_running")


def refresh_environments(reports: Sequence[dict]) -> int:
    """Apply many workers' registrations and heartbeats at once, at most one per environment
    (the newest). Each report holds ``register_environment``'s keyword arguments plus
    ``announce`` (True for a ``register`` event: the agent started or Redis came back).

    One read of the environments, then: a beat that only moves ``last_heartbeat`` forward is
    written for every such environment in one guarded UPDATE (never moved backwards by an
    older report applied late) and skipped if it moves it by less than HEARTBEAT_RESOLUTION;
    a new environment, a changed description or an announcement goes through
    ``register_environment`` (audit, cache publish); a report older than a deregistration
    already recorded is ignored. Returns how many environments were written."""
    latest: dict[str, dict] = {}
    for report in reports:
        latest[report["name"]] = report
    if not latest:
        return 0
    existing = {env.name: env for env in Environment.objects.filter(name__in=list(latest))}
    beats: dict[int, dt.datetime] = {}
    written = 0
    future = timezone.now() + CLOCK_TOLERANCE
    for name, report in latest.items():
        fields = {key: value for key, value in report.items() if key != "announce"}
        fields.setdefault("public_key", "")
        fields["apps_running"] = sorted(fields.get("apps_running") or ())
        at = fields["at"]
        env = existing.get(name)
        if env is not None and env.stopped_at is not None and env.stopped_at > at:
            continue  # a later deregistration is recorded: this beat must not bring it back
        unchanged = (
            env is not None
            and env.stopped_at is None
            and not report.get("announce")
            and all(getattr(env, key) == fields[key] for key in _DESCRIPTIVE)
            # A row from before identities binds its key at the first signed beat.
            and (env.public_key or not fields["public_key"])
        )
        if not unchanged:
            register_environment(**fields)
            written += 1
        elif (
            env.last_heartbeat is None or at - env.last_heartbeat >= HEARTBEAT_RESOLUTION or env.last_heartbeat > future
        ):
            beats[env.pk] = at
    field = Environment._meta.get_field("last_heartbeat")
    for chunk in chunks(sorted(beats)):
        at = per_row({pk: beats[pk] for pk in chunk}, field)
        written += (
            Environment.objects.filter(pk__in=chunk)
            .filter(
                models.Q(last_heartbeat__isnull=True)
                | models.Q(last_heartbeat__lt=at)
                | models.Q(last_heartbeat__gt=future)
            )
            .update(last_heartbeat=at)
        )
    return written


def deregister_environment(name: str, *, at: dt.datetime | None = None) -> bool:
    """The worker's agent stopped cleanly (SIGTERM)."""
    updated = Environment.objects.filter(name=name).update(stopped_at=at or timezone.now())
    if updated:
        audit("environment_stopped", environments=[name], via="worker")
    return bool(updated)


class NotApproved(ValueError):
    """An environment pending approval cannot be enabled; approve it instead."""


def set_environment_enabled(env: Environment, enabled: bool, user: AbstractBaseUser | None = None) -> None:
    """Enable or disable; an environment pending approval is enabled by approving it
    (``identities.approve_environment``), never here."""
    if enabled and not env.approved:
        raise NotApproved(f"{env.name} is pending approval: approve it instead")
    Environment.objects.filter(pk=env.pk).update(enabled=enabled)
    env.enabled = enabled
    audit("environment_enabled" if enabled else "environment_disabled", user=user, environments=[env.name])
    outbox.publish_environment(env)


def placements_on(env: Environment) -> list[AppEnvironment]:
    """The apps placed on this environment, by name: what forgetting it removes."""
    found = AppEnvironment.objects.filter(environment=env).select_related("application")
    return list(found.order_by("application__name"))


@transaction.atomic
def forget_environment(env: Environment, user: AbstractBaseUser | None = None) -> list[str]:
    """Drop an environment from the registry (it registers again if its agent comes back),
    and with it every app's placement there; returns the apps that lost one.

    Whether it may be forgotten (not while online) is the operator surface's rule: it needs
    the liveness the control plane derives. The audit entry ``environment_forgotten`` lists the
    placements removed in its ``error`` text (``placements removed: crm (running), shop
    (stopped)``), and each app gets a ``placement_forgotten`` entry for its own history; the
    apps' specs are published again without the environment, so a worker that comes back
    unloads what it still runs (worker_agent.agent.reconcile)."""
    name = env.name
    placements = placements_on(env)
    apps = [p.application for p in placements]
    env.delete()  # the placements go with it (CASCADE)
    removed = ", ".join(f"{p.application.name} ({p.status})" for p in placements)
    audit(
        "environment_forgotten",
        user=user,
        environments=[name],
        error=f"placements removed: {removed}" if removed else "",
    )
    for app in apps:
        audit("placement_forgotten", user=user, app_name=app.name, environments=[name])
        outbox.publish_app(app)
    outbox.unpublish_environment(name)
    return [app.name for app in apps]
