"""The app's page as its cockpit: the status of each environment with its error and since when,
the operations its state offers there and for all environments, Visit, the first admin's user
name; the page's template (``application/change_form.html``) draws it above the form.

Buttons lead to ``operation_view``'s confirmation pages (``OperationsMixin``), which check the
same rule (``offered``) again when confirmed and act through the registry's action functions
(audited). The buttons of every operation are drawn, those the state does not offer hidden:
status.js shows and hides them as the statuses change, without a reload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.base_user import AbstractBaseUser
from django.urls import reverse

from apps_registry.admin import offered
from apps_registry.admin.operations import OPERATIONS, permission_name
from apps_registry.models import Application, StartMode

OPERATE = "admin:apps_registry_application_operation"


@dataclass(frozen=True)
class Button:
    operation: str
    label: str
    url: str
    offered: bool
    offered_from: str  # the shown statuses that offer it (status.js)


@dataclass(frozen=True)
class Row:
    placement: offered.Placement
    buttons: list[Button] = field(default_factory=list)


@dataclass(frozen=True)
class Cockpit:
    app: Application
    rows: list[Row]
    for_all: list[Button]
    visit_url: str
    first_admin: str
    start_mode: str


def visit_url(app: Application, environments: int) -> str:
    """One Visit: the app's admin through the proxy; with several environments ``?env=`` (empty)
    asks for the chooser, where the operator picks one."""
    url = f"/apps/{app.name}/admin/"
    return f"{url}?env=" if environments > 1 else url


def first_admin(app: Application) -> str:
    """The first admin's user name (the password is only a hash, never shown again)."""
    initial = (app.options or {}).get("initial_admin") or {}
    return str(initial.get("username") or "—")


def _url(app: Application, operation: str, environment: str | None) -> str:
    query = "?back=page" + (f"&environment={environment}" if environment else "")
    return reverse(OPERATE, args=[app.pk, operation]) + query


def build(app: Application, user: AbstractBaseUser) -> Cockpit:
    allowed = [op for op in OPERATIONS if user.has_perm(permission_name(op))]
    placements = offered.placements_of(app)
    rows = [
        Row(
            placement,
            [
                Button(
                    op,
                    OPERATIONS[op].verb,
                    _url(app, op, placement.environment),
                    offered.offered_on(op, placement.shown),
                    offered.offered_from(op),
                )
                for op in offered.PER_ENVIRONMENT
                if op in allowed
            ],
        )
        for placement in placements
    ]
    for_all = [
        Button(
            op,
            f"{OPERATIONS[op].verb} on all" if op != "remove" else "Unload from all…",
            _url(app, op, None),
            bool(offered.targets(op, placements)),
            offered.offered_from(op),
        )
        for op in allowed
    ]
    mode = StartMode(app.start_mode).label if app.start_mode in StartMode.values else app.start_mode
    return Cockpit(app, rows, for_all if placements else [], visit_url(app, len(placements)), first_admin(app), mode)
