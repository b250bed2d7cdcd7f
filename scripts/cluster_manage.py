"""``manage.py`` against the local cluster (``make manage ARGS="create_api_token admin"``): the
supervisor role's environment, as ``make run`` gives it (scripts/cluster_config.py: the secret
key, the registry's database and the Redis user kept under ``CLUSTER_DIR``), then manage.py.

A cluster never started has no registry to act on: one line saying to run ``make run`` first,
status 2, rather than a configuration error about a variable the user never heard of.
The cluster need not be running for commands that only touch the registry's database."""

from __future__ import annotations

import os
import sys

from cluster_config import ROOT, ClusterConfig


def main(argv: list[str]) -> int:
    config = ClusterConfig()
    if not (config.dir / "supervisor").is_dir():
        print(f"no local cluster in {config.dir}: run `make run` once first", file=sys.stderr)
        return 2
    if not argv:
        print('usage: make manage ARGS="<command> [arguments]", e.g. ARGS="create_api_token admin"', file=sys.stderr)
        return 2
    os.umask(0o077)  # as the cluster's own processes: anything written stays this account's
    env = {**os.environ, **config.role_env("supervisor")}
    # A one-off command's figures are not the running supervisor's: kept in this process only
    # (the cluster's metrics folder may not exist yet, and a dead pid's files would be summed).
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.chdir(ROOT)
    # exec, not a child: Ctrl-C, the exit status and the output are manage.py's own.
    os.execve(sys.executable, [sys.executable, "manage.py", *argv], env)  # noqa: S606 (fixed program, no shell)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
