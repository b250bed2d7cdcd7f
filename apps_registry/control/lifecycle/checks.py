"""Whether an app may move to some environments, and where a drained environment's apps go:
every target online (by its lease), enabled, approved and not draining, running the same
software as the app's current environments (the agent's version string: the modules an app
uses come with it)."""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Count

from apps_registry.control import liveness
from apps_registry.models import Application, Environment, EnvironmentStatus


class MoveRefused(Exception):
    """The move cannot start; the message lists why."""


def environment_problems(envs: Sequence[Environment]) -> dict[str, str]:
    """``{env: why it cannot take an app now}`` for those of ``envs`` that cannot."""
    statuses = liveness.environment_statuses(list(envs)) if envs else {}
    problems: dict[str, str] = {}
    for env in envs:
        status = statuses.get(env.name, (EnvironmentStatus.UNKNOWN, None))[0]
        if not env.approved:
            problems[env.name] = f"{env.name} is pending approval"
        elif not env.enabled:
            problems[env.name] = f"{env.name} is disabled"
        elif env.draining:
            problems[env.name] = f"{env.name} is draining"
        elif status != EnvironmentStatus.ONLINE:
            problems[env.name] = f"{env.name} is {status}, not online"
    return problems


def move_plan(app: Application, to: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(sources, targets)``: the environments the app leaves, and those it is added to. Raises
    ``MoveRefused`` with every reason it may not move (unknown, offline, disabled, draining or
    different-version targets; nothing to move)."""
    current = {p.environment.name: p.environment for p in app.placements.select_related("environment")}
    found = {env.name: env for env in Environment.objects.filter(name__in=list(to))}
    reasons = [f"unknown environment {name[:60]!r}" for name in to if name not in found]
    sources = sorted(set(current) - set(to))
    targets = sorted(set(found) - set(current))
    if not reasons and not sources:
        reasons.append(f"{app.name} is on {', '.join(sorted(current)) or 'no environment'} already: nothing to move")
    targets_envs = [found[name] for name in targets]
    reasons += environment_problems(targets_envs).values()
    versions = {current[name].version for name in current if current[name].version}
    for env in targets_envs:
        if versions and env.version and env.version not in versions:
            reasons.append(f"{env.name} runs version {env.version}, {app.name} runs {', '.join(sorted(versions))}")
    if reasons:
        raise MoveRefused("; ".join(reasons))
    return sources, targets


def drain_target(app: Application, draining: Environment) -> list[str] | None:
    """Where ``app`` goes when ``draining`` is drained: its other environments if it has any,
    else the one usable environment with the fewest apps (same version). None if none can."""
    others = [
        p.environment.name for p in app.placements.select_related("environment") if p.environment_id != draining.pk
    ]
    if others:
        return sorted(others)
    candidates = list(
        Environment.objects.exclude(pk=draining.pk)
        .filter(enabled=True, approved=True, draining=False)
        .annotate(apps=Count("placements"))
        .order_by("apps", "name")
    )
    problems = environment_problems(candidates)
    for env in candidates:
        if env.name in problems:
            continue
        if draining.version and env.version and env.version != draining.version:
            continue
        return [env.name]
    return None
