"""A worker process's places for hosted requests (worker_agent/web/places.py), with real
threads: one app's crowd waits behind its own requests, never in front of another app's."""

from __future__ import annotations

import threading
import time

from worker_agent.web.places import Places


def test_an_app_at_its_share_waits_while_another_app_gets_a_place_at_once():
    places = Places(total=4, per_app=2)
    assert places.take("busy", 0) and places.take("busy", 0)
    started = time.monotonic()
    assert places.take("busy", 0.1) is False  # its third waits, then gives up
    assert 0.1 <= time.monotonic() - started < 5
    assert places.take("other", 0)  # another app is not behind it
    assert places.in_use() == 3 and places.in_use("busy") == 2


def test_a_waiting_request_gets_the_place_given_back():
    places = Places(total=1, per_app=1)
    assert places.take("a", 0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(places.take("b", 5)))
    waiter.start()
    threading.Timer(0.1, places.give_back, args=("a",)).start()
    waiter.join(10)
    assert got == [True] and places.in_use("b") == 1 and places.in_use("a") == 0


def test_the_total_bounds_all_apps_together_and_names_are_forgotten_when_idle():
    places = Places(total=2, per_app=5)
    assert places.per_app == 2  # never more than the total
    assert places.take("a", 0) and places.take("b", 0)
    assert places.take("c", 0) is False
    places.give_back("a")
    places.give_back("b")
    assert places.in_use() == 0 and places._per_app_in_use == {}
