"""Login throttling on the supervisor's admin (django-axes, supervisor_site.login_throttle):
the 11th wrong password within a minute is answered 429, and so is the right one after it;
another username or another address is not affected; the pause ends once the window passes."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from axes.models import AccessAttempt
from django.test import Client, override_settings
from django.utils import timezone

from tests.support.processes import wait_until
from tests.support.users import OPERATOR, PASSWORD

LOGIN = "/admin/login/?next=/admin/"


def attempt(client: Client, username: str, password: str, address: str = "192.0.2.10"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_the_eleventh_wrong_password_within_a_minute_is_refused(operator, staff_no_perms):
    client = Client()
    started = time.monotonic()
    for number in range(1, 11):
        response = attempt(client, OPERATOR, f"wrong-{number}")
        assert response.status_code == 200, number  # the form again, with its error
        assert b"Please enter the correct username and password" in response.content
    eleventh = attempt(client, OPERATOR, "wrong-11")
    assert time.monotonic() - started < 60
    assert eleventh.status_code == 429
    assert int(eleventh["Retry-After"]) > 0
    assert b"Too many failed logins" in eleventh.content
    # The right password is refused too while paused: the answer tells nothing about it.
    right = attempt(client, OPERATOR, PASSWORD)
    assert right.status_code == 429
    assert "_auth_user_id" not in client.session

    # Another user from the same address, and the same user from another address, log in.
    assert attempt(Client(), "staff_no_perms", PASSWORD).status_code == 302
    assert attempt(Client(), OPERATOR, PASSWORD, address="198.51.100.7").status_code == 302


@pytest.mark.django_db
def test_a_successful_login_clears_the_count(operator):
    client = Client()
    for number in range(9):
        assert attempt(client, OPERATOR, f"wrong-{number}").status_code == 200
    assert attempt(client, OPERATOR, PASSWORD).status_code == 302
    for number in range(10):
        assert attempt(Client(), OPERATOR, f"again-{number}").status_code == 200, number
    assert attempt(Client(), OPERATOR, "one-too-many").status_code == 429


@pytest.mark.django_db
def test_the_pause_ends_when_the_window_has_passed(operator):
    with override_settings(AXES_COOLOFF_TIME=dt.timedelta(seconds=2)):
        for number in range(11):
            last = attempt(Client(), OPERATOR, f"wrong-{number}")
        assert last.status_code == 429
        assert last["Retry-After"] == "2"
        # Every attempt meanwhile starts the pause over: wait for the window, then try once.
        wait_until(
            lambda: not AccessAttempt.objects.filter(attempt_time__gt=timezone.now() - dt.timedelta(seconds=2)),
            timeout=10,
            interval=0.2,
            message="two seconds without an attempt",
        )
        assert attempt(Client(), OPERATOR, PASSWORD).status_code == 302


@pytest.mark.django_db
def test_code_that_authenticates_without_a_request_still_works(operator, client):
    """Client.login (and management commands) call authenticate() without a request."""
    assert client.login(username=OPERATOR, password=PASSWORD)
    assert client.get("/admin/").status_code == 200
