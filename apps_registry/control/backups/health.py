"""Whether each app's backups are proven: its newest backup and its last verified restore, and a
flag where the newest backup failed, or the newest successful one failed its drill or was never
drilled. The admin's app list and page and the ``/metrics`` gauges read the same answer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from apps_registry.models import Backup, BackupStatus, VerifyStatus

NO_BACKUP = "no backup"
LAST_FAILED = "latest backup failed"
DRILL_FAILED = "latest backup failed its restore drill"
NEVER_VERIFIED = "latest backup never verified"


@dataclass(frozen=True)
class BackupHealth:
    app: str
    last_backup_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_verified_at: dt.datetime | None  # the last verified restore of any of its backups
    flag: str  # "" when the newest backup is proven restorable

    @property
    def flagged(self) -> bool:
        return bool(self.flag)


def of_apps(names: list[str] | None = None) -> dict[str, BackupHealth]:
    """Each app's health (apps with no backup at all: flagged ``no backup`` when named)."""
    rows = Backup.objects.exclude(status__in=(BackupStatus.QUEUED, BackupStatus.RUNNING))
    if names is not None:
        rows = rows.filter(app_name__in=names)
    newest: dict[str, Backup] = {}
    success: dict[str, Backup] = {}
    verified: dict[str, dt.datetime] = {}
    fields = ("app_name", "status", "created_at", "verify_status", "verified_at")
    for backup in rows.order_by("app_name", "-created_at").only(*fields):
        newest.setdefault(backup.app_name, backup)
        if backup.status == BackupStatus.SUCCEEDED:
            success.setdefault(backup.app_name, backup)
        if backup.verified_at and (backup.app_name not in verified or backup.verified_at > verified[backup.app_name]):
            verified[backup.app_name] = backup.verified_at
    result = {}
    for name in sorted(set(names or []) | set(newest)):
        last, good = newest.get(name), success.get(name)
        if last is None:
            flag = NO_BACKUP
        elif last.status == BackupStatus.FAILED:
            flag = LAST_FAILED
        elif last.verify_status == VerifyStatus.FAILED:
            flag = DRILL_FAILED
        elif last.verify_status != VerifyStatus.VERIFIED:
            flag = NEVER_VERIFIED
        else:
            flag = ""
        result[name] = BackupHealth(
            name,
            last.created_at if last else None,
            good.created_at if good else None,
            verified.get(name),
            flag,
        )
    return result
