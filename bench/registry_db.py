"""A fresh, migrated supervisor database for a benchmark."""

from tests.support import services
from tests.support.processes import manage


def create_migrated(env: dict[str, str]) -> None:
    """Create ``env["DB_DATABASE"]`` on the test PostgreSQL and apply every migration to it;
    the database is dropped with the run's others (``services.drop_run_databases``)."""
    import psycopg

    with psycopg.connect(
        host=services.PG_HOST, port=services.PG_PORT, user=services.PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{env["DB_DATABASE"]}"')
    result = manage(["migrate", "--no-input", "-v", "0"], env)
    if result.returncode:
        raise SystemExit(result.stderr)
