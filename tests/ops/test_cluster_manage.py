"""``make manage ARGS=...``: manage.py with the local cluster's supervisor environment (its
secret key, database and Redis user under CLUSTER_DIR), and one clear line where there is no
cluster yet. The running cluster's case is in test_local_cluster.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess

from apps_registry.models import ApiToken
from tests.support.processes import ROOT


def _manage(cluster_dir, args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "DJANGO_", "SECRET_KEY"))}
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "manage", f"ARGS={args}"],
        cwd=ROOT,
        env={**env, "CLUSTER_DIR": str(cluster_dir), **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_cluster_one_line_says_to_run_make_run_first(tmp_path):
    result = _manage(tmp_path / "nothing", "create_api_token admin")
    assert result.returncode != 0
    assert f"no local cluster in {tmp_path / 'nothing'}: run `make run` once first" in result.stderr
    assert "Traceback" not in result.stderr and "SECRET_KEY" not in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_create_api_token_runs_against_the_clusters_registry(tmp_path):
    cluster_dir = tmp_path / "cluster"
    for sub in ("supervisor", "redis"):  # what make run leaves behind (scripts/cluster_config.py)
        (cluster_dir / sub).mkdir(parents=True)
    assert _manage(cluster_dir, "migrate -v0").returncode == 0
    assert _manage(cluster_dir, "ensure_admin", ADMIN_PASSWORD="pw-cluster-manage").returncode == 0
    issued = _manage(cluster_dir, "create_api_token admin")
    assert issued.returncode == 0, issued.stderr
    raw = issued.stdout.strip().splitlines()[-1]
    with sqlite3.connect(cluster_dir / "supervisor" / "db.sqlite3") as db:
        stored = db.execute("SELECT token_hash FROM apps_registry_apitoken").fetchall()
        audited = db.execute("SELECT COUNT(*) FROM apps_registry_auditentry WHERE action='api_token_issued'").fetchone()
    assert stored == [(ApiToken.hash(raw),)]
    assert audited == (1,)
