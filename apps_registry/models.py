"""The supervisor's registry: environments, applications, their statuses and the audit trail.

Status fields are changed only through ``apps_registry.registry.actions``; nothing else calls
``.save()`` on them.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from apps_registry.names import MAX_HOST_LENGTH, validate_app_domain, validate_app_name, validate_environment_name


class EnvironmentStatus(models.TextChoices):
    ONLINE = "online"
    UNKNOWN = "unknown"
    OFFLINE = "offline"
    STOPPED = "stopped"


class AppStatus(models.TextChoices):
    STOPPED = "stopped"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


class StartMode(models.TextChoices):
    MANUAL = "manual", "When an operator starts it"
    FIRST_VISIT = "on_first_visit", "On first visit"


class Environment(models.Model):
    """A worker environment. Workers register themselves; operators may disable or forget one."""

    name = models.CharField(max_length=40, unique=True, validators=[validate_environment_name])
    url = models.URLField("URL", max_length=300)
    proxy_url = models.URLField("proxy URL", max_length=300, blank=True)
    version = models.CharField(max_length=60, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    apps_running = models.JSONField(default=list, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # Set when the agent deregisters on SIGTERM, cleared when it registers again.
    stopped_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(
        default=True, help_text="A disabled environment gets no new apps and no proxied requests."
    )
    # Draining (registry/moves.py): takes no new placements while its apps move elsewhere.
    draining = models.BooleanField(
        default=False, help_text="A draining environment takes no new apps; the apps it runs move elsewhere."
    )
    # Identity (docs/security.md): the public key the name is bound to (base64 Ed25519; empty
    # for a row from before identities, bound by its next signed message), and whether an
    # operator approved it (ENVIRONMENT_APPROVAL: new names wait, disabled, until approved).
    public_key = models.CharField(max_length=60, blank=True)
    key_bound_at = models.DateTimeField(null=True, blank=True)
    approved = models.BooleanField(default=True)
    # The last message refused for this name (another key, a bad signature): shown in the admin,
    # audited at most once per IDENTITY_AUDIT_EVERY, and offered to the operator's re-bind.
    refused_key = models.CharField(max_length=60, blank=True)
    refused_host = models.CharField(max_length=255, blank=True)
    refused_reason = models.CharField(max_length=200, blank=True)
    refused_at = models.DateTimeField(null=True, blank=True)
    refused_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("approve_environment", "Can approve a pending environment"),
            ("rebind_environment", "Can re-bind an environment to a new key"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def target_url(self) -> str:
        """Where the supervisor sends proxied requests: the proxy URL wins over the URL."""
        return self.proxy_url or self.url


class ApplicationQuerySet(models.QuerySet):
    def with_placements(self) -> ApplicationQuerySet:
        """Each application with its placements (by environment name) and their environments,
        in two queries however many applications there are."""
        placements = AppEnvironment.objects.select_related("environment").order_by("environment__name")
        return self.prefetch_related(models.Prefetch("placements", queryset=placements))


class Application(models.Model):
    name = models.CharField(max_length=40, unique=True, validators=[validate_app_name])
    display_name = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    # A custom domain the app is also served at, at "/" (the reference system's cname). NULL,
    # not "", when there is none, so that the unique constraint holds only between real ones.
    domain = models.CharField(
        max_length=MAX_HOST_LENGTH,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_app_domain],
        help_text="Optional host name (e.g. crm.example.com) serving this app at /. Point its DNS at the supervisor.",
    )
    # {"database": {...}, "modules": ["contacts", "tasks"], "start_mode": "manual"}
    options = models.JSONField(default=dict, blank=True)
    # Opt-in: started on another environment when the only one it runs on has been offline for
    # longer than APP_FAILOVER_GRACE (apps_registry.control.failover).
    failover = models.BooleanField(
        default=False,
        help_text="Start it on another online environment when the only one it runs on has been offline "
        "longer than the failover grace period (it then runs there only).",
    )
    environments = models.ManyToManyField(Environment, through="AppEnvironment", related_name="applications")
    # Bumped by every start/stop/restart/remove request: a command or queued start carrying
    # an older generation is stale and is dropped, so the last request wins.
    generation = models.PositiveBigIntegerField(default=0)
    # Which app of this name this is: new for every created app, so a name deleted and created
    # again is a new app to the workers (its generations start afresh, and the deleted one's
    # commands and reports are recognised as stale). Carried by every command, status report,
    # acknowledgement and AppSpec (docs/protocol.md).
    incarnation = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ApplicationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("start_application", "Can start applications"),
            ("stop_application", "Can stop applications"),
            ("restart_application", "Can restart applications"),
            ("remove_application", "Can remove applications from environments"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def modules(self) -> list[str]:
        return list(self.options.get("modules", []))

    @property
    def start_mode(self) -> str:
        return self.options.get("start_mode", StartMode.MANUAL)


class AppEnvironment(models.Model):
    """One application on one environment: its own status, desired state and last error."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="placements")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="placements")
    status = models.CharField(max_length=10, choices=AppStatus.choices, default=AppStatus.STOPPED)
    # What the operator asked for; the worker's reconciliation converges towards it.
    desired_running = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    # Whether the proxy sends requests here. False while a move starts the app here (until its
    # switch), and on the move's source after the switch (until it is unloaded): one UPDATE
    # flips both, so every request goes to one side or the other (registry/moves.py).
    serving = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["application", "environment"], name="unique_app_environment"),
        ]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["queued_at"])]

    def __str__(self) -> str:
        return f"{self.application_id}@{self.environment_id}: {self.status}"


class AuditEntry(models.Model):
    """Who asked for what, when, on which environments, and how it ended."""

    class Result(models.TextChoices):
        PENDING = "pending"
        OK = "ok"
        ERROR = "error"
        # Overtaken by a later request for the same app: never shown as ok.
        SUPERSEDED = "superseded"

    class Outcome(models.TextChoices):
        """How a request ended on one of its environments."""

        OK = "ok"
        ERROR = "error"
        SUPERSEDED = "superseded"
        NOT_DELIVERED = "not delivered"
        # Failed or undelivered at first, then the environment reached the requested state.
        CONVERGED_LATER = "converged later"

    at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # Kept as text so the trail survives the app's deletion.
    app_name = models.CharField(max_length=40, db_index=True, blank=True)
    action = models.CharField(max_length=40)
    environments = models.JSONField(default=list, blank=True)
    result = models.CharField(max_length=10, choices=Result.choices, default=Result.OK)
    error = models.TextField(blank=True)
    request_id = models.CharField(max_length=36, blank=True, db_index=True)
    via = models.CharField(max_length=20, default="admin")
    # Environment name → Outcome, filled in as each environment's outcome becomes known.
    outcomes = models.JSONField(default=dict, blank=True)
    # The request's newest entry for its app ended error or not delivered on some environment:
    # a status report reaching the requested state there turns that into "converged later".
    awaiting_convergence = models.BooleanField(default=False, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"  # "18 audit entries", not "18 audit trail"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.app_name}"


class ApiToken(models.Model):
    """A bearer token for /api/v1/. Only its SHA-256 is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name: str = "") -> tuple[ApiToken, str]:
        """Create a token and return it with its raw value, which is shown once and never stored."""
        raw = secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, token_hash=cls.hash(raw), prefix=raw[:8])
        return token, raw


# PostgreSQL hands the epoch out from a sequence: nextval takes no row lock, so transactions
# that publish never wait for one another (a one-row counter would be locked until commit, in
# whatever order each transaction reached it: deadlocks with the row locks of the apps). Its
# values are not given back on rollback, which only costs a rebuild. SQLite serialises writers
# anyway and uses the row.
EPOCH_SEQUENCE = "apps_registry_config_epoch_seq"


class ConfigEpoch(models.Model):
    """The registry's configuration epoch, bumped in the transaction of every change that is
    published to the configuration cache (``registry.outbox``) and written into the cache with
    it (``P:cfg:epoch``). A cache whose epoch is older than the registry's (Redis restored from
    an older snapshot) is rebuilt, and agents never act on a cache older than one they already
    applied. One row (SQLite), or the sequence ``EPOCH_SEQUENCE`` (PostgreSQL)."""

    value = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "configuration epoch"

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def bump(cls) -> int:
        """The next epoch, taken in the caller's transaction."""
        from django.db import connection

        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT nextval(%s)", [EPOCH_SEQUENCE])
                return int(cursor.fetchone()[0])
            table = connection.ops.quote_name(cls._meta.db_table)
            cursor.execute(f"UPDATE {table} SET value = value + 1 WHERE id = 1 RETURNING value")  # noqa: S608
            row = cursor.fetchone()
        if row is None:  # the row is gone (a flushed test database): start again from 1
            cls.objects.update_or_create(pk=1, defaults={"value": 1})
            return 1
        return int(row[0])

    @classmethod
    def current(cls) -> int:
        """The latest epoch handed out (0 before the first)."""
        from django.db import connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {EPOCH_SEQUENCE}")  # noqa: S608
                return int(cursor.fetchone()[0])
        return cls.objects.filter(pk=1).values_list("value", flat=True).first() or 0


class SigningKey(models.Model):
    """The supervisor's own signing key (``supervisor``: signs every command), when
    SUPERVISOR_KEY does not give one: generated once, kept here so every supervisor process
    of the registry signs with the same key. The seed is a secret, like the sessions beside it."""

    name = models.CharField(max_length=40, unique=True)
    seed = models.CharField(max_length=60)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class JobKind(models.TextChoices):
    MOVE = "move"
    DRAIN = "drain"
    BACKUP = "backup"
    RESTORE = "restore"
    DRILL = "drill"
    CLONE = "clone"


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


JOB_DONE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(models.Model):
    """A tracked multi-step job (move, drain, backup, …) run by the queue worker: its steps are
    ``JobStep`` rows, changed only through ``apps_registry.registry.jobs``."""

    # A UUID: the API hands it out, and it says nothing about how many jobs there were.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=JobKind.choices)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    # What it is about: kept as text too, so the job's history survives the app's deletion.
    application = models.ForeignKey(Application, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    app_name = models.CharField(max_length=40, blank=True, db_index=True)
    environment = models.ForeignKey(Environment, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    # A drain's moves are its children.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    params = models.JSONField(default=dict, blank=True)
    # An operator asked to cancel: the job honours it at its next step boundary, where it can.
    cancel_requested = models.BooleanField(default=False)
    # The queue job running it (RQ's id) and when it last said it was alive: recovery finds a
    # running job whose worker vanished by these.
    runner = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [("cancel_job", "Can cancel jobs")]

    def __str__(self) -> str:
        subject = self.app_name or (self.environment.name if self.environment_id else "")
        return f"{self.kind} {subject} ({self.status})".replace("  ", " ")

    @property
    def done(self) -> bool:
        return self.status in JOB_DONE


class JobStep(models.Model):
    """One step of a job, in order: its status, when it ran and why it failed."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=60)
    status = models.CharField(max_length=10, choices=StepStatus.choices, default=StepStatus.QUEUED)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["job", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="unique_job_step_position"),
            models.UniqueConstraint(fields=["job", "name"], name="unique_job_step_name"),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.name}: {self.status}"


class BackupStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class VerifyStatus(models.TextChoices):
    NEVER = "", "never verified"
    VERIFIED = "verified"
    FAILED = "failed"


class Backup(models.Model):
    """One backup of one app (database dump, uploads, manifest) in the backup store; changed
    only through ``apps_registry.registry.backups``. The parts are in the store under
    ``location``; the row says what they must be (size, checksum, manifest) and whether a
    restore drill last proved them restorable."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Kept as text too: a deleted app's backups can still be restored (as a new app).
    application = models.ForeignKey(
        Application, null=True, blank=True, on_delete=models.SET_NULL, related_name="backups"
    )
    app_name = models.CharField(max_length=40, db_index=True)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=10, choices=BackupStatus.choices, default=BackupStatus.QUEUED)
    scheduled = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Where the parts are: the store's label (directory or bucket) and the key prefix in it.
    store = models.CharField(max_length=300, blank=True)
    location = models.CharField(max_length=200, blank=True)
    vendor = models.CharField(max_length=20, blank=True)
    size = models.BigIntegerField(default=0)
    checksum = models.CharField(max_length=64, blank=True)  # sha256 of the manifest (which holds the parts')
    duration = models.FloatField(default=0.0)  # seconds
    manifest = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The last restore drill: when it proved the backup restorable, or that it is not.
    verify_status = models.CharField(max_length=10, choices=VerifyStatus.choices, blank=True, default="")
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_error = models.TextField(blank=True)
    drilled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("restore_backup", "Can restore backups")]

    def __str__(self) -> str:
        return f"{self.app_name} {self.created_at:%Y-%m-%d %H:%M:%S} ({self.status})"
