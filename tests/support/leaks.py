"""Session-end check: no process started by this test run may outlive it.

Every process a test starts inherits ``APP_TEST_RUN_ID`` (tests/support/services.py puts it in
the environment before anything starts), so once the fixtures are torn down a scan of
``/proc/*/environ`` finds whatever was left running: those are killed and the session fails
with a list of them. A fixture that forgets a process it swapped in, or a helper that stops
only a process group's leader, shows up here instead of as a stray gunicorn after ``make test``.

Loaded by tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import services

# Processes in the middle of exiting (a group just sent SIGKILL, a gunicorn worker finishing
# its last request) get this long to disappear before they count as leaked.
GRACE_SECONDS = 3.0
LEAKS = pytest.StashKey[list["Leak"]]()


@dataclass(frozen=True)
class Leak:
    pid: int
    ppid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}): {self.command}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return b""


def _parent(pid: int) -> int:
    stat = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _ancestors(pid: int) -> set[int]:
    """This process and its ancestors: a wrapper that passed APP_TEST_RUN_ID in is not a leak."""
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = _parent(pid)
    return seen


def run_processes(run_id: str = services.RUN_ID) -> list[Leak]:
    """Every live process (zombies have no environment) whose environment carries this run's
    id, but for the pytest process, its ancestors and its own xdist workers."""
    me = os.getpid()
    excluded = _ancestors(me)
    marker = f"APP_TEST_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in excluded:
            continue
        environ = _read(entry / "environ").split(b"\0")
        if marker not in environ:
            continue
        pid = int(entry.name)
        ppid = _parent(pid)
        if ppid == me and any(item.startswith(b"PYTEST_XDIST_WORKER=") for item in environ):
            continue  # an xdist worker of this session: it ends with the session
        command = _read(entry / "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        found.append(Leak(pid, ppid, command[:300] or f"[{entry.name}]"))
    return found


def kill_leaks(leaks: list[Leak]) -> None:
    for leak in leaks:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(leak.pid, signal.SIGKILL)


def survivors(grace: float = GRACE_SECONDS) -> list[Leak]:
    deadline = time.monotonic() + grace
    while True:
        leaks = run_processes()
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.1)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Session fixtures are torn down by now (at the last test's teardown); xdist workers
    # check nothing: their controller scans once all of them have finished.
    if hasattr(session.config, "workerinput"):
        return
    leaks = survivors()
    session.config.stash[LEAKS] = leaks
    if leaks:
        kill_leaks(leaks)
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    leaks = config.stash.get(LEAKS, [])
    if leaks:
        terminalreporter.section("processes left running by this test run (now killed)", sep="=", red=True)
        for leak in leaks:
            terminalreporter.line(str(leak), red=True)
        terminalreporter.line(
            f"{len(leaks)} process(es) with APP_TEST_RUN_ID={services.RUN_ID} outlived the session: "
            "the fixture or helper that started each must stop it.",
            red=True,
        )
