"""Per-app backups: a consistent dump of one app's database and its uploaded files, written to
a backup store, restored into the same app, a new one (a clone) or a scratch database (a restore
drill).

- ``store`` — where backups go: a private directory (``APP_BACKUP_DIR``) or an S3-compatible
  bucket (``APP_BACKUP_S3_BUCKET``, through boto3).
- ``targets`` — where an app's database and uploads are, by the workers' own rule.
- ``engine`` — dump, verify, restore and check one backup (``pg_dump -Fc``/``pg_restore`` for
  PostgreSQL, SQLite's online backup API for SQLite, a tar of the uploads, a manifest).
- ``jobs`` — the queue worker's job functions: backup, restore, clone, drill.
- ``schedule`` — scheduled backups, retention and restore drills, run from the queue worker's
  periodic check under a Redis lock (one queue worker at a time).

The dump runs in the supervisor's queue worker, not on a worker environment: the app's
database is shared by every environment running it and named by a rule the queue worker knows
too (docs/architecture.md, "Backups").
"""
