"""Redis connections and key names, shared by the supervisor and the workers."""

from __future__ import annotations

import functools

import redis
from django.conf import settings

# Short timeouts: Redis is on the local network; a hung call must not pin a request.
_SOCKET_TIMEOUT = 5.0


def configured() -> bool:
    return settings.APP_CONFIG.uses_redis


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=_SOCKET_TIMEOUT,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        decode_responses=True,
        # Everything we write is UTF-8; bytes that are not (forged into a stream) must reach
        # the input validation as text instead of failing the whole read.
        encoding_errors="replace",
    )


def get() -> redis.Redis:
    """The Redis holding the configuration cache (APP_SUPERVISOR_REDIS_URL)."""
    config = settings.APP_CONFIG
    return _client(config.supervisor_redis_url or config.command_redis_url)


def commands() -> redis.Redis:
    """The Redis carrying commands and status (APP_COMMAND_REDIS_URL)."""
    config = settings.APP_CONFIG
    return _client(config.command_redis_url or config.supervisor_redis_url)


def key(*parts: str) -> str:
    """A namespaced key: ``<APP_REDIS_PREFIX>:part:part``."""
    return ":".join((settings.APP_CONFIG.redis_prefix, *parts))
