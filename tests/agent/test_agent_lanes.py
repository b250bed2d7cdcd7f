"""The agent's command lanes (in-process): one app's commands in order, different apps at once,
bounded."""

import threading
import time

from worker_agent.agent.lanes import AppLanes


def test_one_app_in_order_different_apps_concurrently_and_bounded():
    log: list[tuple[str, int, str]] = []
    running = {"now": 0, "peak": 0}
    lock = threading.Lock()
    gate = threading.Event()

    def run(task):
        app, number = task
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
            log.append((app, number, "start"))
        gate.wait(5)
        time.sleep(0.01)
        with lock:
            running["now"] -= 1
            log.append((app, number, "end"))

    lanes = AppLanes(2, run)
    for number in range(3):
        for app in ("a", "b", "c"):
            lanes.submit(app, (app, number))
    time.sleep(0.1)
    with lock:
        started = {app for app, _, what in log if what == "start"}
    assert len(started) == 2  # two apps at once, never more than the pool
    gate.set()
    deadline = time.monotonic() + 10
    while len(log) < 18 and time.monotonic() < deadline:
        time.sleep(0.01)
    for app in ("a", "b", "c"):
        assert [n for a, n, what in log if a == app and what == "start"] == [0, 1, 2]
    assert running["peak"] == 2
    assert lanes.close(timeout=5)


def test_close_drops_tasks_not_started_and_waits_for_running_ones():
    ran: list[int] = []
    release = threading.Event()

    def run(task):
        ran.append(task)
        release.wait(5)

    lanes = AppLanes(1, run)
    for number in range(3):
        lanes.submit("a", number)
    time.sleep(0.05)
    threading.Timer(0.1, release.set).start()
    assert lanes.close(timeout=5)
    assert ran == [0]  # the rest stays unacknowledged in the stream and comes back


def test_lanes_run_everything_in_order():
    done: list[tuple[str, int]] = []
    finished = threading.Event()

    def run(task):
        done.append(task)
        if len(done) == 40:
            finished.set()

    lanes = AppLanes(3, run)
    for number in range(10):
        for app in ("a", "b", "c", "d"):
            lanes.submit(app, (app, number))
    assert finished.wait(10)
    for app in ("a", "b", "c", "d"):
        assert [n for a, n in done if a == app] == list(range(10))
    assert lanes.close(timeout=5)
