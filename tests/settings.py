"""Settings for the in-process test suite: the supervisor role against the real
PostgreSQL and Redis on loopback. Processes started by tests get their own environment."""

import os

from tests.support import services

os.environ.update(services.supervisor_test_environ())

from supervisor_site.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
