"""A request body the client could not deliver — malformed chunking, a body cut short, a
client that vanished or stalled mid-upload — is the client's fault: a 400 (or a quiet close
when nobody is left to read it) and one INFO line, never a 500 with a traceback.

gunicorn raises its parse errors (``InvalidChunkSize``, ``ChunkMissingTerminator``, …) and
``NoMoreData`` from ``wsgi.input`` while the application reads; Django turns an ``OSError``
there into ``UnreadablePostError``, which is a 500. :class:`GuardedInputApplication` wraps
``wsgi.input`` (in every role, ``supervisor_site/wsgi.py``) so that any failure to read it
becomes :class:`ClientInputError`, a ``BadRequest`` Django answers with 400;
:class:`QuietClientInputErrors` turns Django's warning with a traceback into one INFO line.
A ``Host`` no site here answers to is the client's too (a scanner, a stale DNS record):
:class:`QuietDisallowedHost` makes Django's ERROR with a traceback one INFO line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.core.exceptions import BadRequest

try:  # the parse errors of the server that reads the body, when it is gunicorn
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - gunicorn is a runtime requirement

    class _ServerParseError(Exception):
        pass


log = logging.getLogger(__name__)

# What reading the body may raise when the client is at fault: the server's parse errors,
# and OSError (NoMoreData, a reset connection, a socket timeout).
_CLIENT_FAULTS = (_ServerParseError, OSError)


class ClientInputError(BadRequest):
    """The request body could not be read; the client sent it badly or went away."""


class GuardedInput:
    """``wsgi.input`` whose read failures raise :class:`ClientInputError` (and are remembered,
    so that whoever answers knows the connection's framing is lost).

    A body shorter than its ``Content-Length`` is a failure too: gunicorn's reader returns
    ``b""`` at the end of the connection without complaint, and a proxy that passed such a
    body on would leave the worker waiting for the rest until its read timeout (a 504).
    """

    def __init__(self, stream: Any, content_length: int | None) -> None:
        self._stream = stream
        self._remaining = content_length  # None: no length announced (chunked, or none)
        self.failure: str = ""

    def _fail(self, reason: str, cause: BaseException | None = None) -> ClientInputError:
        self.failure = reason
        error = ClientInputError(reason)
        error.__cause__ = cause
        return error

    def _guard(self, call: Callable[[], Any], expected: int) -> Any:
        """``call``'s data; at least ``expected`` bytes of it while the announced length is
        not reached (``read(n)`` blocks for n bytes or the end of the body, so fewer means
        the client stopped sending)."""
        if self.failure:  # the stream is in an unknown state: never read it again
            raise ClientInputError(self.failure)
        try:
            data = call()
        except _CLIENT_FAULTS as error:
            raise self._fail(f"{type(error).__name__}: {error}".rstrip(": "), error) from error
        if self._remaining is not None:
            got = sum(map(len, data)) if isinstance(data, list) else len(data)
            if got < min(expected, self._remaining):
                short = self._remaining - got
                raise self._fail(f"the body ended {short} bytes short of its Content-Length")
            self._remaining -= got
        return data

    def read(self, size: int | None = None) -> bytes:
        whole = size is None or size < 0
        expected = self._remaining if whole or self._remaining is None else size
        return self._guard(lambda: self._stream.read() if size is None else self._stream.read(size), expected or 0)

    def readline(self, size: int | None = None) -> bytes:
        # A line may be shorter than asked; only nothing at all, before the end, is short.
        expected = 0 if size == 0 else 1
        return self._guard(lambda: self._stream.readline() if size is None else self._stream.readline(size), expected)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._guard(lambda: self._stream.readlines() if hint is None else self._stream.readlines(hint), 1)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class GuardedInputApplication:
    """The WSGI application with its ``wsgi.input`` guarded."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None and not isinstance(stream, GuardedInput):
            environ["wsgi.input"] = GuardedInput(stream, _length(environ.get("CONTENT_LENGTH")))
        return self.app(environ, start_response)


def _length(raw: str | None) -> int | None:
    try:
        length = int(raw or "")
    except ValueError:
        return None  # absent or not a number: Django and the proxy refuse the latter themselves
    return length if length >= 0 else None


class QuietClientInputErrors(logging.Filter):
    """On ``django.request``: Django logs a ``BadRequest`` as a WARNING with its traceback; a
    client's broken body is routine on the internet, so it becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ClientInputError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            request = getattr(record, "request", None)
            record.msg, record.args = "bad request body on %s: %s", (getattr(request, "path", "?"), error)
            record.exc_info, record.exc_text = None, None
        return True


class QuietDisallowedHost(logging.Filter):
    """On ``django.security.DisallowedHost``: Django answers 400 and logs an ERROR with the
    traceback; with per-app hosts and custom domains, unknown Host headers are routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True
