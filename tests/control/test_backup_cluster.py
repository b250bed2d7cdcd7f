"""Backups on the real cluster: an app on env_a with a contact and its uploaded file (through
the supervisor's proxy), backed up by a real queue worker (``manage.py rqworker app_starts``)
through the API; its data then lost and restored (stop, restore, start through the queue), and
cloned under a new name onto env_b: the same rows and the same file, served through the proxy.
The queue worker drills every 2 s here (APP_BACKUP_DRILL_INTERVAL): its scheduled drill proves
the backup restorable, and fails it once a part of it is corrupted in the store."""

from __future__ import annotations

import psycopg
import pytest

from tests.control.test_queue import Api, QueueWorkers
from tests.hosting.test_runtime_hosting import Client
from tests.support import schema_check, services
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster
APP, COPY, PASSWORD = "bk_live", "bk_live_copy", "bk-live-pass"
FILE = b"analytical engine\n" * 200


@pytest.fixture(scope="module")
def queue_worker(cluster, tmp_path_factory):
    pool = QueueWorkers(cluster, tmp_path_factory.mktemp("backup-queue"))
    pool.start(1, APP_BACKUP_DRILL_INTERVAL="2")
    yield pool
    pool.stop_all()


def _rows(app: str) -> list:
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=f"{services.RUN_ID}_{app}"
    ) as conn:
        return conn.execute(
            "SELECT id, name, email, attachment, created_at FROM contacts_contact ORDER BY id"
        ).fetchall()


def _job_now(api: Api, job_id: str) -> dict:
    status, body = api._call("GET", f"/jobs/{job_id}")
    assert not schema_check.response_errors(api.document, "/jobs/{job_id}", "GET", status, body)
    return body


def _job(api: Api, job_id: str, timeout: float = 60) -> dict:
    body = wait_until(
        lambda: (found := _job_now(api, job_id))["status"] in ("succeeded", "failed", "cancelled") and found,
        timeout=timeout,
        interval=0.2,
        message=f"job {job_id}",
    )
    assert body["status"] == "succeeded", body
    return body


def _drill_state(backup_id: str) -> tuple[str, str]:
    with psycopg.connect(
        host=services.PG_HOST,
        port=services.PG_PORT,
        user=services.PG_USER,
        dbname=f"{services.RUN_ID}_supervisor_cluster",
    ) as conn:
        row = conn.execute(
            "SELECT verify_status, verify_error FROM apps_registry_backup WHERE id = %s", (backup_id,)
        ).fetchone()
    return row


def _signed_in(port: int, app: str) -> Client:
    client = Client(port)
    assert client.login(app, "admin", PASSWORD) == 302
    return client


def test_backup_restore_and_clone_give_back_the_rows_and_the_file(api: Api, queue_worker, cluster_logs):
    cluster = cluster_logs
    body = {"name": APP, "environments": ["env_a"], "modules": ["contacts"], "start": True, "admin_password": PASSWORD}
    status, answer = api("POST", "/apps", body)
    assert status == 201, answer
    api.wait_statuses(APP, {"env_a": "running"}, timeout=60)

    browser = _signed_in(cluster.port, APP)
    add = f"/apps/{APP}/admin/contacts/contact/add/"
    fields = {"csrfmiddlewaretoken": browser.csrf_token(add), "name": "Ada Lovelace", "email": "ada@example.org"}
    fields.update(phone="", company="Engines", notes="", _save="Save")
    status, _, page = browser.post_form(add, fields, {"attachment": ("ada.txt", FILE)})
    assert status == 302, page[:2000]
    before = _rows(APP)
    assert [row[1] for row in before] == ["Ada Lovelace"]

    status, answer = api("POST", f"/apps/{APP}/backups")
    assert status == 202, answer
    assert [s["status"] for s in _job(api, answer["job_id"])["steps"]] == ["succeeded", "succeeded"]
    (backup,) = api("GET", f"/apps/{APP}/backups")[1]["backups"]
    assert backup["status"] == "succeeded" and backup["size"] > len(FILE)
    # The queue worker's scheduled drill restores it into a scratch database and checks it.
    wait_until(
        lambda: api("GET", f"/apps/{APP}/backups")[1]["backups"][0]["verified_at"],
        timeout=30,
        interval=0.2,
        message="the backup verified by a drill",
    )

    # The data is lost: the contact deleted, its file gone.
    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname=f"{services.RUN_ID}_{APP}"
    ) as conn:
        conn.execute("DELETE FROM contacts_contact")
    (services.storage_dir() / "media" / APP / "contacts" / "ada.txt").unlink()
    assert browser.get(f"/apps/{APP}/files/contacts/ada.txt")[0] == 404

    status, answer = api("POST", f"/apps/{APP}/restore", {"backup": backup["id"]})
    assert status == 202, answer
    steps = _job(api, answer["job_id"], timeout=90)["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [
        ("verify", "succeeded"),
        ("stop", "succeeded"),
        ("restore", "succeeded"),
        ("start", "succeeded"),
    ]
    api.wait_statuses(APP, {"env_a": "running"}, timeout=60)
    assert _rows(APP) == before
    browser = _signed_in(cluster.port, APP)  # the session table was restored too: sign in again
    status, _, text = browser.get(f"/apps/{APP}/files/contacts/ada.txt")
    assert status == 200 and text.encode() == FILE

    # A clone under a new name, on the other environment.
    status, answer = api(
        "POST", f"/apps/{APP}/restore", {"backup": backup["id"], "as": COPY, "environments": ["env_b"]}
    )
    assert status == 202, answer
    _job(api, answer["job_id"], timeout=90)
    api.wait_statuses(COPY, {"env_b": "running"}, timeout=60)
    assert _rows(COPY) == before
    status, _, text = _signed_in(cluster.port, COPY).get(f"/apps/{COPY}/files/contacts/ada.txt")
    assert status == 200 and text.encode() == FILE

    # A part corrupted in the store: the next drill fails the backup, saying which part.
    part = services.storage_dir() / "supervisor" / "backups" / APP / backup["id"] / "files.tar"
    data = bytearray(part.read_bytes())  # (its end is the tar's zero padding: change the middle)
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    try:
        status, error = wait_until(
            lambda: (state := _drill_state(backup["id"]))[0] == "failed" and state,
            timeout=30,
            interval=0.2,
            message="the corrupted backup failed by a drill",
        )
    except AssertionError:
        print(queue_worker.logs())
        raise
    assert "files.tar does not match its checksum" in error
