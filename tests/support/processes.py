"""Real processes on loopback ports for tests: start, wait for, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]  # tests/support/ -> the repository root
PYTHON = sys.executable
T = TypeVar("T")

# How many times Process.start() ran in this interpreter: tests/conftest.py checks that only
# tests marked ``cluster`` start real servers, so that ``-m "not cluster"`` stays fast.
started = 0
# wait_until's "no value seen yet" (None and False are values a predicate returns).
_NOTHING = object()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, message: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds;
    the failure names the last value the predicate returned (and its last error), which is
    what says why the wait failed."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value: object = _NOTHING
    while True:
        try:
            result = predicate()
            if result:
                return result
            last_value = result
        except Exception as error:  # keep polling; report the last error on timeout
            last_error = error
        if time.monotonic() > deadline:
            details = []
            if last_value is not _NOTHING:
                details.append(f"last value: {last_value!r}")
            if last_error:
                details.append(f"last error: {last_error!r}")
            detail = f" ({'; '.join(details)})" if details else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}{detail}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except OSError:
        return False


class Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_dir: Path, overrides: dict[str, str] | None = None
    ):
        self.name = name
        self.args = args
        # The caller's own dict, not a copy: a harness that re-points it (tests/faults) before
        # start() must reach the process. ``overrides`` (the launcher's settings) go on top.
        self.env = env
        self.overrides = overrides or {}
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        """Start the process, or start it again after it stopped: the same object keeps owning
        whatever it runs, so whoever stops it last stops the latest one."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        global started
        started += 1
        full_env = {**os.environ, **self.env, **self.overrides}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up runs, as in a crash."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)
            self.reap_group()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.reap_group()
        return self.popen.returncode

    def reap_group(self) -> None:
        """SIGKILL whatever is left in the group once its leader has exited (a gunicorn worker
        whose master died first, say): the group is ours, nothing in it may outlive the test.
        Linux does not reuse a group id while any member lives, so what is hit is ours."""
        if self.popen is not None and self.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def manage(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``manage.py`` with the given environment (on top of the test process's)."""
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GUNICORN_CONF = ROOT / "gunicorn.conf.py"


def gunicorn(name: str, port: int, env: dict[str, str], log_dir: Path, workers: int = 2, threads: int = 4) -> Process:
    """A gunicorn of the repository's own configuration (gunicorn.conf.py, as every launcher),
    on a loopback port, with a short graceful timeout so that stopping it stays quick."""
    settings = {
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": str(workers),
        "GUNICORN_THREADS": str(threads),
        "GUNICORN_GRACEFUL_TIMEOUT": "5",
        "GUNICORN_ACCESS_LOG": "-",
    }
    return Process(name, [PYTHON, "-m", "gunicorn", "-c", str(GUNICORN_CONF)], env, log_dir, overrides=settings)
