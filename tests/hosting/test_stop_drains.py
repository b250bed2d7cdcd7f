"""A stop is over (and may be reported ``stopped``) only once no web process serves the app:
real ``flock``s on this machine's files, the real runtime, a request held in flight."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import time

import pytest

from worker_agent.hosting import local_state, runtime, serving


@pytest.fixture
def storage(settings, tmp_path):
    settings.APP_CONFIG = dataclasses.replace(settings.APP_CONFIG, storage_dir=tmp_path)
    return tmp_path


def test_stop_waits_for_the_request_in_flight_and_refuses_new_ones(storage):
    local_state.set_status("drain_a", "running", spec={"name": "drain_a", "options": {}, "generation": 1})
    admitted, release = threading.Event(), threading.Event()

    def request_in_flight() -> None:
        with serving.serving("drain_a"):  # as the middleware holds it while the view runs
            assert local_state.app_status("drain_a") == "running"
            admitted.set()
            release.wait(10)

    heard: list[str] = []
    runtime.add_status_listener(lambda name, status, error: heard.append(status))
    in_flight = threading.Thread(target=request_in_flight)
    in_flight.start()
    try:
        assert admitted.wait(10)
        stop = threading.Thread(target=runtime.stop_app, args=("drain_a",))
        stop.start()
        # The state file says stopped (new requests are refused), but the stop is not over
        # while the admitted request runs: nobody has heard ``stopped`` yet.
        stop.join(0.5)
        assert stop.is_alive()
        assert local_state.app_status("drain_a") == "stopped"
        assert heard == ["stopping"]
        with serving.serving("drain_a"):  # a new request is not held up, and reads stopped
            assert local_state.app_status("drain_a") == "stopped"
        release.set()
        stop.join(10)
        assert not stop.is_alive()
        assert heard == ["stopping", "stopped"]
    finally:
        release.set()
        in_flight.join(10)
        runtime._listeners.clear()


def test_a_stuck_request_delays_the_stop_only_up_to_the_drain_timeout(storage):
    local_state.set_status("drain_b", "stopped")
    with serving.serving("drain_b"):
        assert serving.wait_drained("drain_b", timeout=0.1) is False
    assert serving.wait_drained("drain_b", timeout=0.1) is True


def test_a_request_never_blocks_on_the_lock_and_is_refused_busy_past_its_deadline(storage):
    """The request side asks without blocking (gevent: a blocking flock would stall every
    greenlet of the process); held exclusively by someone, it polls and gives up as Busy."""
    path = serving.lock_path("drain_c")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(serving.Busy), serving.serving("drain_c", timeout=0.2):
            pass
        assert 0.2 <= time.monotonic() - started < 5
        released = threading.Timer(0.1, fcntl.flock, args=(fd, fcntl.LOCK_UN))
        released.start()
        with serving.serving("drain_c", timeout=5):  # admitted once the holder lets go
            pass
        released.join(5)
    finally:
        os.close(fd)
