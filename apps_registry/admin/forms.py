"""The form of the Applications admin: an application with its environments, business
modules, start mode, first admin user and, on the add page, "Start now"; on the change page,
the confirmation an edit of the environments needs when it takes the app down."""

from __future__ import annotations

from django import forms
from django.db.models import Q

from apps_registry.models import Application, Environment, StartMode
from apps_registry.names import (
    ADMIN_USERNAME_MAX_LENGTH,
    NAME_RULE,
    check_first_admin_password,
    clean_admin_username,
    normalise_host,
)
from apps_registry.registry import actions
from supervisor_site import catalogue


class ApplicationForm(forms.ModelForm):
    target_environments = forms.ModelMultipleChoiceField(
        label="Environments",
        queryset=Environment.objects.all(),
        widget=forms.CheckboxSelectMultiple,
        help_text="Where the application runs; usually one. Several split its traffic between them.",
    )
    modules = forms.MultipleChoiceField(
        label="Business modules",
        choices=catalogue.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    start_mode = forms.ChoiceField(label="Start", choices=StartMode.choices, initial=StartMode.MANUAL)
    # The length is the shared rule's to check (clean_admin_username), so that the API and this
    # form give the same message; the browser is told it too.
    admin_username = forms.CharField(
        label="First admin username",
        initial="admin",
        required=False,
        widget=forms.TextInput(attrs={"maxlength": ADMIN_USERNAME_MAX_LENGTH}),
    )
    admin_password = forms.CharField(
        label="First admin password",
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Leave blank to generate one; it is shown once after saving and stored only as a hash.",
    )
    # The app's own backup schedule and retention (options.backups); blank: the fleet's default.
    backup_interval_hours = forms.FloatField(
        label="Back up every (hours)",
        required=False,
        min_value=0,
        max_value=24 * 366,
        help_text="Blank: the fleet's default (APP_BACKUP_INTERVAL); 0: no scheduled backups.",
    )
    backup_keep = forms.IntegerField(
        label="Backups kept",
        required=False,
        min_value=1,
        max_value=1000,
        help_text="Blank: the fleet's default (APP_BACKUP_KEEP).",
    )
    # Shown (and acted on) only on the add page and for users who may start applications:
    # ApplicationAdmin.get_fieldsets and save_model check the permission.
    start_now = forms.BooleanField(
        label="Start now", required=False, help_text="Queue a start on its environments once created."
    )
    # On the change page: the operator's confirmation that an edit of the environments may
    # take the app down (clean() asks for it only then).
    confirm_takedown = forms.BooleanField(
        label="Take it down there",
        required=False,
        help_text="Needed only if the environments chosen leave out every one the app runs on: "
        "it is stopped and unloaded there (its data kept).",
    )

    class Meta:
        model = Application
        fields = ["name", "display_name", "description", "domain", "failover"]
        # The rule names.py enforces, said before the operator types, not only after a refusal.
        help_texts = {"name": f"Part of the app's URL and database name: it {NAME_RULE}; it cannot change later."}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        app = self.instance
        placed = list(app.placements.values_list("environment_id", flat=True)) if app.pk else []
        # A disabled environment takes no new apps, but stays listed where the app already is.
        # A draining environment takes no new apps (it keeps those placed there until they move).
        self.fields["target_environments"].queryset = Environment.objects.filter(
            Q(enabled=True, draining=False) | Q(pk__in=placed)
        )
        draining = list(Environment.objects.filter(draining=True).exclude(pk__in=placed).values_list("name", flat=True))
        if draining:
            self.fields[
                "target_environments"
            ].help_text += (
                f" Not offered: {', '.join(draining)} (draining: takes no new apps while its apps move elsewhere)."
            )
        if app.pk:
            self.fields["target_environments"].initial = placed
            self.fields["modules"].initial = app.modules
            self.fields["start_mode"].initial = app.start_mode
            backups = (app.options or {}).get("backups") or {}
            if isinstance(backups, dict):
                interval = backups.get("interval")
                if isinstance(interval, int | float):
                    self.fields["backup_interval_hours"].initial = interval / 3600
                self.fields["backup_keep"].initial = backups.get("keep")

    def clean_domain(self) -> str | None:
        # Typed as people type host names; stored lower-case, None when blank (unique only
        # between real domains). The model's validator checks the rest.
        return normalise_host(self.cleaned_data.get("domain") or "") or None

    def clean_admin_username(self) -> str:
        # Blank means the default here; the API's rule is the same function (apps_registry.names).
        return clean_admin_username(self.cleaned_data.get("admin_username") or "admin")

    def clean_admin_password(self) -> str:
        password = self.cleaned_data.get("admin_password") or ""
        # ApplicationAdmin.get_form sets who is filling the form in.
        check_first_admin_password(password, getattr(self, "acting_user", None))
        return password

    def clean(self) -> dict:
        cleaned = super().clean()
        envs = cleaned.get("target_environments")
        if self.instance.pk and envs is not None and not cleaned.get("confirm_takedown"):
            down = actions.takedown(self.instance, list(envs))
            if down:
                where = ", ".join(down)
                self.add_error(
                    "confirm_takedown",
                    f"{self.instance.name} goes down on {where}: it runs there and on none of the environments "
                    "chosen, so saving stops and unloads it there (its data kept). Tick “Take it down there” "
                    "to save anyway.",
                )
        return cleaned

    def application_options(self, app: Application) -> dict:
        """``app.options`` with the modules and start mode chosen here (other keys kept)."""
        options = dict(app.options or {})
        options["modules"] = list(self.cleaned_data.get("modules") or [])
        options["start_mode"] = self.cleaned_data.get("start_mode") or StartMode.MANUAL
        backups = {}
        if self.cleaned_data.get("backup_interval_hours") is not None:
            backups["interval"] = round(self.cleaned_data["backup_interval_hours"] * 3600)
        if self.cleaned_data.get("backup_keep") is not None:
            backups["keep"] = self.cleaned_data["backup_keep"]
        if backups:
            options["backups"] = backups
        else:
            options.pop("backups", None)
        return options
