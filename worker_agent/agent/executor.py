"""Carrying out commands in their app's lane, through the hosting runtime: the generation
check, the app's spec from the configuration cache, start/stop/restart/remove with their
statuses, and the acknowledgement of the result."""

from __future__ import annotations

import logging
from collections.abc import Callable

from apps_registry.control import protocol
from apps_registry.control.discovery import CacheNotReady, get_discovery
from worker_agent.agent.commands import CommandError, Delivery
from worker_agent.agent.epoch import EpochGuard
from worker_agent.agent.inbox import Generations
from worker_agent.agent.reporter import Reporter
from worker_agent.hosting import app_databases, local_state, runtime

log = logging.getLogger("worker_agent.agent")


def running_apps() -> dict[str, dict]:
    """The apps running here, from the local state file; empty if it cannot be read."""
    try:
        return runtime.running_apps()
    except Exception:
        log.exception("cannot read the local state of running apps")
        return {}


def spec_generation(spec: dict) -> int:
    try:
        return int(spec.get("generation") or 0)
    except (TypeError, ValueError):
        return 0


def spec_incarnation(spec: dict) -> str:
    """The spec's incarnation (``""`` if it has none or a bad one: then it matches any)."""
    try:
        return protocol.incarnation_of(spec.get("incarnation"))
    except protocol.ProtocolError:
        return ""


def local_incarnation(app: str) -> str:
    """The incarnation of the app this environment hosts under the name, if any."""
    try:
        return spec_incarnation((local_state.app_entry(app) or {}).get("spec") or {})
    except Exception:  # an unreadable state file: unknown, which matches any
        return ""


class DeletedIncarnation(Exception):
    """A command for an app that was deleted since (its name now belongs to a new app)."""


class Executor:
    def __init__(
        self,
        *,
        env: str,
        reporter: Reporter,
        generations: Generations,
        finish: Callable[[Delivery, str, str], None],
        epochs: EpochGuard | None = None,
    ) -> None:
        self.env = env
        # The highest cache epoch acted on: an older cache (a restored snapshot) is not used.
        self.epochs = epochs or EpochGuard(None)
        self.reporter = reporter
        self.generations = generations
        self._finish = finish
        # Apps (name, incarnation) whose start failed here, with the generation it failed at:
        # reconciliation does not retry those in a loop; a new request (a newer generation)
        # or the name's new app tries again.
        self._failed: dict[tuple[str, str], int] = {}

    # --- the app's spec -------------------------------------------------------------------------

    def spec(self, app: str) -> dict | None:
        """The app's spec from the configuration cache; None if the cache does not know it."""
        try:
            stamp, spec = get_discovery().get_app_at(app)
        except CacheNotReady:
            raise CommandError("the configuration cache is not built yet (the supervisor rebuilds it)") from None
        if not self.epochs.accept(stamp):
            raise CommandError(
                f"the configuration cache (epoch {stamp.epoch}) is older than one this agent already applied "
                f"({self.epochs.highest}); the supervisor rebuilds it"
            )
        return spec if isinstance(spec, dict) else None

    def _placed_spec(self, app: str) -> dict:
        spec = self.spec(app)
        if spec is None:
            raise CommandError(f"unknown app {app!r}")
        if self.env not in (spec.get("environments") or {}):
            raise CommandError(f"app {app!r} is not placed on environment {self.env!r}")
        return spec

    def start_failed_for(self, spec: dict) -> bool:
        """True if a start of this very generation of the app already failed here."""
        return self._failed.get((spec.get("name"), spec_incarnation(spec))) == spec_generation(spec)

    # --- actions, each reporting its statuses ---------------------------------------------------

    def start(self, app: str, spec: dict) -> None:
        incarnation = spec_incarnation(spec)
        self.reporter.status(app, "starting", incarnation=incarnation)
        try:
            runtime.start_app(spec)
        except Exception as error:
            message = str(error) or error.__class__.__name__
            if not isinstance(error, runtime.AppStartError):
                log.exception("start of %s failed", app)
            self.reporter.status(app, "error", message, incarnation=incarnation)
            self._failed[(app, incarnation)] = spec_generation(spec)
            raise CommandError(message) from None
        self._failed.pop((app, incarnation), None)
        self.reporter.status(app, "running", incarnation=incarnation)

    def stop(self, app: str) -> None:
        incarnation = local_incarnation(app)
        self.reporter.status(app, "stopping", incarnation=incarnation)
        runtime.stop_app(app)
        self.reporter.status(app, "stopped", incarnation=incarnation)

    def _check_incarnation(self, command: protocol.Command) -> None:
        """Refuse a command of a deleted app: the cache's spec of the name is another app.
        (The cache not knowing the name is no evidence: the delete's own remove runs.)"""
        if not command.incarnation:
            return
        try:
            spec = self.spec(command.app)
        except CommandError:  # cache not built: the local state decides below
            spec = None
        current = spec_incarnation(spec) if spec is not None else ""
        if not current and command.action in ("stop", "remove"):
            current = local_incarnation(command.app)
        if not protocol.same_incarnation(command.incarnation, current):
            raise DeletedIncarnation(f"app {command.app!r} was deleted and created again since this request")

    def unload(self, app: str, *, drop_data: bool = False) -> None:
        """Stop the app and unload it from this environment (its data kept unless drop_data)."""
        incarnation = local_incarnation(app)
        self.reporter.status(app, "stopping", incarnation=incarnation)
        runtime.remove_app(app, drop_data=drop_data)
        self.reporter.status(app, "stopped", incarnation=incarnation)

    def _execute(self, delivery: Delivery) -> None:
        command = delivery.command
        app = command.app
        self._check_incarnation(command)
        if command.action == "start":
            self.start(app, self._placed_spec(app))
        elif command.action == "restart":
            spec = self._placed_spec(app)
            if app in running_apps():
                self.stop(app)
            self.start(app, spec)
        elif command.action == "stop":
            if app not in runtime.app_statuses() and self.spec(app) is None:
                raise CommandError(f"unknown app {app!r}")
            self.stop(app)
        elif command.action == "remove":
            self.unload(app, drop_data=command.drop_data)
        elif command.action == "check":
            self.check(app)

    def check(self, app: str) -> None:
        """A move's pre-check: does this environment offer the app's modules, reach its
        database, and know every migration applied there (same or newer module versions)?
        Nothing changes and no status is reported; the acknowledgement says ``ok`` or
        ``error`` with why."""
        spec = self.spec(app)
        if spec is None:
            raise CommandError(f"unknown app {app!r}")
        try:
            app_databases.modules_of(spec)  # this environment offers the app's modules
            applied = app_databases.check_reachable(app_databases.describe(app, spec.get("options") or {}))
        except app_databases.DatabaseError as error:
            raise CommandError(str(error)) from None
        newer = app_databases.migrations_unknown_here(applied)
        if newer:
            shown = ", ".join(newer[:5]) + (f" and {len(newer) - 5} more" if len(newer) > 5 else "")
            raise CommandError(f"this environment's modules are older than the app's data: it lacks {shown}")

    def run(self, delivery: Delivery) -> None:
        """Carry out one command when its lane gets to it, then acknowledge it."""
        command = delivery.command
        if command.generation < self.generations.get(command.app, command.incarnation):
            self._finish(delivery, "superseded", "a newer request for this app arrived first")
            self.reporter.actual(command.app, command.incarnation)
            return
        try:
            self._execute(delivery)
        except DeletedIncarnation as error:  # nothing to report: that app is gone
            log.info("command %s (%s %s) ignored: %s", command.id, command.action, command.app, error)
            self._finish(delivery, "superseded", str(error))
            return
        except CommandError as error:
            self._finish(delivery, "error", str(error))
            return
        except Exception as error:
            log.exception("command %s (%s %s) failed", command.id, command.action, command.app)
            self.reporter.status(command.app, "error", f"{command.action} failed: {error}")
            self._finish(delivery, "error", f"{command.action} failed: {error}")
            return
        self._finish(delivery, "ok")
