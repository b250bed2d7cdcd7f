#!/bin/sh
# Run once by the postgres image on an empty data directory, after 10-init-databases.sql:
# one login role per role, none of them superuser. The supervisor owns its database only;
# the workers share one role (each app's database is shared by every environment running
# it), which may create databases (one per app) and owns its two. Passwords come from the
# environment (compose/.env, made by scripts/make-env.sh); none has a default.
set -eu
: "${DB_PASSWORD_SUPERVISOR:?}" "${DB_PASSWORD_WORKERS:?}"
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
  -v sup_pw="$DB_PASSWORD_SUPERVISOR" -v work_pw="$DB_PASSWORD_WORKERS" <<'SQL'
CREATE ROLE app_supervisor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'sup_pw';
CREATE ROLE app_workers LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD :'work_pw';
ALTER DATABASE nocobase_supervisor OWNER TO app_supervisor;
ALTER DATABASE nocobase_worker_a OWNER TO app_workers;
ALTER DATABASE nocobase_worker_b OWNER TO app_workers;
REVOKE ALL ON DATABASE nocobase_supervisor FROM PUBLIC;
REVOKE ALL ON DATABASE nocobase_worker_a FROM PUBLIC;
REVOKE ALL ON DATABASE nocobase_worker_b FROM PUBLIC;
SQL
