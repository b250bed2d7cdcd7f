-- Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d).
-- One database per role, as in the document; the apps' own databases (app_<name>) are
-- created by the workers when an app first starts, so the user needs CREATEDB (postgres has it).
CREATE DATABASE nocobase_supervisor;
CREATE DATABASE nocobase_worker_a;
CREATE DATABASE nocobase_worker_b;
