"""Per-app backup and restore throughput against plain ``pg_dump``/``pg_restore`` on the same data.

    .venv/bin/python bench/backup_bench.py [--rows 400000] [--files 200] [--file-kb 100] [--rounds 3]

What it does: fills one app database on the loopback PostgreSQL (user postgres) with ``--rows``
contacts (about 150 bytes each, two indexes) and its upload folder with ``--files`` files, then,
``--rounds`` times, alternating:

- reference backup: ``pg_dump -Fc`` of the database to a file, then ``tar -cf`` of the folder;
- our backup: ``engine.dump`` into a directory store (the same dump in an exported snapshot, row
  counts, the files' tar and checksums, the manifest);
- reference restore: ``dropdb --force``/``createdb``, ``pg_restore`` of that file, ``tar -xf``;
- our restore: ``engine.restore`` (every part verified against its checksum, the database dropped
  and created, ``pg_restore``, the files extracted).

Throughput = (database size + files' bytes) / median seconds; ratio = reference seconds / ours
(target ≥ 0.8). Both run on the same two cores, one after another: a busy machine slows both,
so trust the ratio, not the MB/s. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402


def _run(command: list[str], **options) -> None:
    subprocess.run(command, check=True, capture_output=True, **options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--file-kb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="backup-bench-"))
    os.environ.update(
        {
            **services.supervisor_test_environ(),
            "DJANGO_SETTINGS_MODULE": "supervisor_site.settings",
            "DB_DATABASE": "postgres",
            "APP_STORAGE_DIR": str(work / "storage"),
        }
    )
    import django

    django.setup()
    import psycopg

    from apps_registry.control.backups import engine, targets
    from apps_registry.control.backups.store import DirectoryStore

    app = "bkbench"  # its database: <APP_DB_PREFIX = RUN_ID_>bkbench, dropped at the end
    db = targets.app_database(app, {})
    media = work / "media" / app
    pg = {"PGHOST": services.PG_HOST, "PGPORT": str(services.PG_PORT), "PGUSER": services.PG_USER}
    env = {**os.environ, **pg}
    try:
        targets.create_empty(db)
        with psycopg.connect(host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=db.name) as c:
            c.execute("CREATE TABLE contacts_contact (id int PRIMARY KEY, name text, email text, notes text)")
            c.execute(
                "INSERT INTO contacts_contact SELECT i, 'Contact ' || i, 'c' || i || '@example.org',"
                " md5(i::text) || md5((i * 7)::text) || repeat('x', 40) FROM generate_series(1, %s) i",
                (args.rows,),
            )
            c.execute("CREATE INDEX ON contacts_contact (email)")
            c.commit()
            db_bytes = c.execute("SELECT pg_database_size(%s)", (db.name,)).fetchone()[0]
        (media / "contacts").mkdir(parents=True)
        for i in range(args.files):
            (media / "contacts" / f"file_{i}.bin").write_bytes(os.urandom(args.file_kb * 1024))
        data_mb = (db_bytes + args.files * args.file_kb * 1024) / 1e6

        store = DirectoryStore(work / "store")
        times: dict[str, list[float]] = {"pg_dump": [], "backup": [], "pg_restore": [], "restore": []}
        dump_file, tar_file = work / "plain.dump", work / "plain.tar"
        for round_ in range(args.rounds):
            prefix = f"{app}/r{round_}"
            started = time.perf_counter()
            _run(["pg_dump", "-Fc", "-f", str(dump_file), db.name], env=env)
            _run(["tar", "-cf", str(tar_file), "-C", str(media), "."])
            times["pg_dump"].append(time.perf_counter() - started)

            started = time.perf_counter()
            result = engine.dump(db, media, store, prefix, app=app)
            times["backup"].append(time.perf_counter() - started)

            started = time.perf_counter()
            _run(["dropdb", "--force", db.name], env=env)
            _run(["createdb", db.name], env=env)
            _run(["pg_restore", "--no-owner", "--exit-on-error", "-d", db.name, str(dump_file)], env=env)
            shutil.rmtree(media)
            media.mkdir()
            _run(["tar", "-xf", str(tar_file), "-C", str(media)])
            times["pg_restore"].append(time.perf_counter() - started)

            started = time.perf_counter()
            engine.restore(store, prefix, result.checksum, db, media)
            times["restore"].append(time.perf_counter() - started)
            store.delete_prefix(prefix)
        median = {name: statistics.median(values) for name, values in times.items()}
        print(
            json.dumps(
                {
                    "bench": "backup",
                    "rows": args.rows,
                    "files": args.files,
                    "data_mb": round(data_mb, 1),
                    "rounds": args.rounds,
                    "backup_s": round(median["backup"], 2),
                    "pg_dump_s": round(median["pg_dump"], 2),
                    "backup_mb_per_s": round(data_mb / median["backup"], 1),
                    "pg_dump_mb_per_s": round(data_mb / median["pg_dump"], 1),
                    "backup_ratio": round(median["pg_dump"] / median["backup"], 2),
                    "restore_s": round(median["restore"], 2),
                    "pg_restore_s": round(median["pg_restore"], 2),
                    "restore_mb_per_s": round(data_mb / median["restore"], 1),
                    "pg_restore_mb_per_s": round(data_mb / median["pg_restore"], 1),
                    "restore_ratio": round(median["pg_restore"] / median["restore"], 2),
                    "load_1m": round(os.getloadavg()[0], 2),
                    "target": "ratio ≥ 0.8",
                },
                indent=1,
            )
        )
    finally:
        targets.drop(db)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
