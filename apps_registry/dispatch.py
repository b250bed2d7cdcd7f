"""Hands committed registry changes to the adapters.

Actions run inside database transactions; what they tell Redis or the workers must not go
out before the change is committed (or at all if it is rolled back), so every call here is
deferred with ``transaction.on_commit``.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from apps_registry.models import Application, Environment


def _discovery():
    from apps_registry.discovery import get_discovery

    return get_discovery()


def _process():
    from apps_registry.process import get_process_adapter

    return get_process_adapter()


def publish_app(app: Application) -> None:
    pk = app.pk
    transaction.on_commit(lambda: _discovery().publish_app_by_pk(pk))


def unpublish_app(name: str) -> None:
    transaction.on_commit(lambda: _discovery().unpublish_app(name))


def publish_environment(env: Environment) -> None:
    pk = env.pk
    transaction.on_commit(lambda: _discovery().publish_environment_by_pk(pk))


def unpublish_environment(name: str) -> None:
    transaction.on_commit(lambda: _discovery().unpublish_environment(name))


def send_start(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    pk, envs = app.pk, list(environments)
    transaction.on_commit(lambda: _process().start(pk, envs, generation=generation, request_id=request_id))


def send_stop(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    name, envs = app.name, list(environments)
    transaction.on_commit(lambda: _process().stop(name, envs, generation=generation, request_id=request_id))


def send_restart(app: Application, environments: Sequence[str], *, generation: int, request_id: str) -> None:
    name, envs = app.name, list(environments)
    transaction.on_commit(lambda: _process().restart(name, envs, generation=generation, request_id=request_id))


def send_remove(
    app: Application, environments: Sequence[str], *, generation: int, request_id: str, drop_data: bool
) -> None:
    name, envs = app.name, list(environments)
    transaction.on_commit(
        lambda: _process().remove(name, envs, generation=generation, request_id=request_id, drop_data=drop_data)
    )
