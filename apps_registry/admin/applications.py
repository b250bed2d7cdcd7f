"""Applications in the admin: list, add, edit, delete, plus the operations of
``OperationsMixin``. Every change goes through ``apps_registry.registry.actions`` (audit trail,
cache write-through, commands to workers); nothing here saves a status. The list costs a
constant number of queries whatever the number of rows: placements and their environments are
prefetched in one query.
"""

from __future__ import annotations

import logging
import secrets

import redis
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.hashers import make_password
from django.db.models import Exists, Max, OuterRef, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from apps_registry.admin import audit, cockpit, jobs, logs, offered
from apps_registry.admin.backups import BackupsMixin, flag
from apps_registry.admin.forms import ApplicationForm
from apps_registry.admin.moves import MoveActionMixin
from apps_registry.admin.operations import OperationsMixin
from apps_registry.admin.site import SupervisorMedia, apply_worker_events, status_badge
from apps_registry.control import liveness
from apps_registry.control.backups import health
from apps_registry.control.shown_status import explain, shown_status
from apps_registry.models import AppEnvironment, Application, AppStatus, Environment, EnvironmentStatus
from apps_registry.registry import actions, outbox

log = logging.getLogger(__name__)


class PlacementStatusFilter(admin.SimpleListFilter):
    title = "status (on any environment)"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return AppStatus.choices

    def queryset(self, request, queryset):
        if self.value() not in AppStatus.values:
            return queryset
        return queryset.filter(Exists(AppEnvironment.objects.filter(application=OuterRef("pk"), status=self.value())))


class EnvironmentFilter(admin.SimpleListFilter):
    title = "environment"
    parameter_name = "environment"

    def lookups(self, request, model_admin):
        return [(name, name) for name in Environment.objects.values_list("name", flat=True)]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(
            Exists(AppEnvironment.objects.filter(application=OuterRef("pk"), environment__name=self.value()))
        )


@admin.register(Application)
class ApplicationAdmin(MoveActionMixin, BackupsMixin, OperationsMixin, admin.ModelAdmin):
    form = ApplicationForm
    list_display = [
        "name_shown",
        "display_name_shown",
        "statuses",
        "backups_shown",
        "open_link",
    ]  # + the operations column (the mixin)
    list_display_links = ["name_shown"]
    list_filter = [PlacementStatusFilter, EnvironmentFilter]
    # An environment's name finds the apps placed there (Django de-duplicates the join's rows).
    search_fields = ["name", "display_name", "placements__environment__name"]
    list_per_page = 50
    actions = [
        "start_applications",
        "stop_applications",
        "restart_applications",
        "remove_applications",
        "move_applications",
    ]
    Media = SupervisorMedia

    @admin.display(description="name", ordering="name")
    def name_shown(self, app: Application) -> str:
        # A 40-character name keeps the statuses and operations on screen: cut with an
        # ellipsis by the stylesheet, whole in its title.
        return format_html('<span class="appsup-ellipsis" title="{0}">{0}</span>', app.name)

    @admin.display(description="display name", ordering=Lower("display_name"))
    def display_name_shown(self, app: Application) -> str:
        # Ordered case-insensitively: "apple" beside "Apple", not after "Zebra".
        return format_html('<span class="appsup-ellipsis" title="{0}">{0}</span>', app.display_name)

    _add_fieldsets = [
        (None, {"fields": ["name", "display_name", "description", "domain", "target_environments"]}),
        ("Options", {"fields": ["modules", "start_mode", "failover", "backup_interval_hours", "backup_keep"]}),
        ("First admin user", {"fields": ["admin_username", "admin_password"]}),
    ]
    # One "Start" label on the add form: the start mode is "Starts", this fieldset "Now".
    _change_fieldsets = [
        (
            None,
            {"fields": ["name", "display_name", "description", "domain", "target_environments", "confirm_takedown"]},
        ),
        ("Options", {"fields": ["modules", "start_mode", "failover", "backup_interval_hours", "backup_keep"]}),
        ("Backups", {"fields": ["backups"]}),
        ("Recent history", {"fields": ["recent_history"]}),
        ("Moves", {"fields": ["recent_jobs"]}),
        ("Recent log lines", {"fields": ["recent_logs"]}),
    ]
    _start_fieldset = ("Once created", {"fields": ["start_now"]})

    def get_fieldsets(self, request: HttpRequest, obj: Application | None = None) -> list:
        if obj is not None:
            return self._change_fieldsets
        if self.has_start_permission(request):
            return [*self._add_fieldsets, self._start_fieldset]
        return self._add_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Application | None = None) -> list[str]:
        # The name is a URL segment, a database and Redis keys: fixed once created.
        return ["name", "backups", "recent_history", "recent_jobs", "recent_logs"] if obj is not None else []

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        apply_worker_events()
        # The newest app when the page was drawn: status.js counts those created after it.
        newest = Application.objects.aggregate(newest=Max("pk"))["newest"] or 0
        return super().changelist_view(request, {"appsup_newest_pk": newest, **(extra_context or {})})

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).with_placements()

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        apps = list(changelist.result_list)  # evaluates (and caches) the page's queryset
        envs = {p.environment.name: p.environment for app in apps for p in app.placements.all()}
        statuses = liveness.environment_statuses(list(envs.values()))  # one Redis round trip per page
        backups = health.of_apps([app.name for app in apps])  # one query per page
        for app in apps:
            app.environment_statuses = statuses
            app.backup_health = backups.get(app.name)
            # What the row's operation buttons are offered by (apps_registry.admin.offered).
            app.shown_placements = [
                offered.Placement(p.environment.name, shown_status(p.status, statuses[p.environment.name][0]))
                for p in app.placements.all()
            ]
        return changelist

    @admin.display(description="last verified restore")
    def backups_shown(self, app: Application) -> str:
        """Flagged when the newest backup failed, failed its drill or was never verified."""
        if not hasattr(app, "backup_health"):
            app.backup_health = health.of_apps([app.name]).get(app.name)
        return flag(app.backup_health)

    @admin.display(description="backups")
    def backups(self, app: Application | None) -> str:
        return self.backups_block(app)

    @admin.display(description="visit")
    def open_link(self, app: Application) -> str:
        """One Visit: the app's own admin through /apps/<name>/; with several environments the
        proxy's chooser first (``?env=``, empty), where the operator picks one."""
        url = cockpit.visit_url(app, len(app.placements.all()))  # prefetched
        return format_html('<a class="appsup-visit" href="{}" target="_blank" rel="noopener">Visit</a>', url)

    @admin.display(description="status per environment")
    def statuses(self, app: Application) -> str:
        placements = app.placements.all()  # prefetched, already sorted by environment name
        if not placements:
            return "—"
        statuses = getattr(app, "environment_statuses", None)
        if statuses is None:  # outside the list (the change page): this app's environments only
            statuses = liveness.environment_statuses([p.environment for p in placements])
        badges = []
        for p in placements:
            env_status, seen = statuses.get(p.environment.name, (EnvironmentStatus.UNKNOWN, None))
            shown = shown_status(p.status, env_status)
            badges.append((status_badge(shown, p.environment.name, explain(p.status, env_status, seen)),))
        return format_html_join(" ", "{}", badges)

    @admin.display(description="recent history")
    def recent_history(self, app: Application | None) -> str:
        return audit.recent_history(app)

    @admin.display(description="moves")
    def recent_jobs(self, app: Application | None) -> str:
        return jobs.recent_jobs(app)

    @admin.display(description="per environment, live")
    def recent_logs(self, app: Application | None) -> str:
        return logs.recent_logs(app)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        app = self.get_object(request, object_id) if object_id.isdigit() else None
        if app is not None:
            apply_worker_events()  # the statuses shown are the workers' latest
            context["cockpit"] = cockpit.build(app, request.user)
        return super().change_view(request, object_id, form_url, context)

    def history_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        # One history: ours (the audit trail, with each request's outcome), not Django's
        # LogEntry list, which knows only the admin's own creates and edits.
        app = self.get_object(request, object_id) if object_id.isdigit() else None
        url = reverse("admin:apps_registry_auditentry_changelist")
        return HttpResponseRedirect(f"{url}?app_name={app.name}" if app else url)

    def changeform_view(
        self, request: HttpRequest, object_id: str | None = None, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except redis.RedisError as error:
            return self._redis_unavailable(request, error)
        except actions.PlacementWouldStop as refusal:
            # The app started running between the form's check and the save: nothing was saved
            # (the view's transaction rolled back); ask again on a fresh form.
            messages.error(request, f"Not saved: {refusal}. Tick “Take it down there” to confirm.")
            return HttpResponseRedirect(request.path)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict | None = None) -> HttpResponse:
        context = dict(extra_context or {})
        app = self.get_object(request, object_id) if object_id.isdigit() else None
        if app is not None and request.method != "POST":
            context["delete_placements"] = offered.placements_of(app)  # what deleting stops, warned
        try:
            return super().delete_view(request, object_id, context)
        except redis.RedisError as error:
            return self._redis_unavailable(request, error)

    def _redis_unavailable(self, request: HttpRequest, error: redis.RedisError) -> HttpResponseRedirect:
        """A page that says what happened instead of a 500: refusals (NotDelivered) say what
        was or was not changed; anything else is the bare fact that Redis did not answer."""
        log.warning("admin: Redis unavailable during %s %s", request.method, request.path, exc_info=True)
        if isinstance(error, outbox.NotDelivered):
            messages.error(request, str(error))
        else:
            messages.error(request, f"Redis (the command channel) is unavailable ({error}); try again once it is back.")
        return HttpResponseRedirect(reverse("admin:apps_registry_application_changelist"))

    def get_form(self, request: HttpRequest, obj: Application | None = None, change: bool = False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        # A class of this request's own (modelform_factory makes one per call): the form refuses
        # the operator's own password as the app's first admin password.
        form.acting_user = request.user
        return form

    def save_model(self, request: HttpRequest, obj: Application, form: ApplicationForm, change: bool) -> None:
        environments = list(form.cleaned_data["target_environments"])
        options = form.application_options(obj)
        if change:
            obj.options = options
            actions.update_application(obj, request.user)
            change = actions.set_application_environments(
                obj, environments, request.user, force=bool(form.cleaned_data.get("confirm_takedown"))
            )
            self._say_placement_change(request, obj, change)
            return
        self._create(request, obj, form, environments, options)
        if form.cleaned_data.get("start_now") and self.has_start_permission(request):
            actions.request_start(Application.objects.get(pk=obj.pk), request.user)

    def _say_placement_change(self, request: HttpRequest, app: Application, change: actions.PlacementChange) -> None:
        # Beside Django's "changed successfully": what the edit did to the running app.
        if change.taken_down:
            messages.warning(
                request,
                f"{app.name} was taken down on {', '.join(change.taken_down)} (stopped and unloaded, data kept).",
            )
        if change.start_request:
            messages.info(request, f"The start of {app.name} on {', '.join(change.added)} was queued.")

    def _create(
        self, request: HttpRequest, obj: Application, form: ApplicationForm, environments: list, options: dict
    ) -> None:
        # As in the API: an app created while Redis is down could not be started, and the
        # password shown below would be lost with the error page; refuse before changing anything.
        outbox.require_channel("creation", obj.name)
        username = form.cleaned_data["admin_username"]
        password = form.cleaned_data.get("admin_password") or ""
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        # Only a hash leaves this request: the worker seeds the user from it.
        options["initial_admin"] = {"username": username, "password_hash": make_password(password)}
        app = actions.create_application(
            name=obj.name,
            environments=environments,
            user=request.user,
            display_name=obj.display_name,
            description=obj.description,
            options=options,
            domain=obj.domain,
            failover=obj.failover,
        )
        # The admin goes on with obj (log entry, redirect): make it the saved row.
        obj.pk = app.pk
        obj.options = app.options
        obj._state.adding = False
        if generated:
            messages.success(
                request,
                f"First admin user of {app.name}: {username} / {password} (shown only this once; note it now).",
            )

    def save_related(self, request: HttpRequest, form: ApplicationForm, formsets: list, change: bool) -> None:
        # Placements were set by the actions in save_model; there is nothing else to save.
        return None

    def delete_model(self, request: HttpRequest, obj: Application) -> None:
        # The app page's delete offers "also drop its database" (delete_confirmation.html).
        self.delete_queryset(request, [obj], drop_data=request.POST.get("drop_data") == "on")

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet | list[Application], *, drop_data: bool = False
    ) -> None:
        gone = []
        for app in queryset:
            try:
                actions.delete_application(app, request.user, drop_data=drop_data)
            except actions.ApplicationGone:  # deleted meanwhile by another request: not a crash
                gone.append(app.name)
        if gone:
            self.message_user(request, f"Already deleted by another request: {', '.join(gone)}.", messages.WARNING)
