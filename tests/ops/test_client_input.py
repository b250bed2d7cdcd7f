"""The guard on ``wsgi.input`` (supervisor_site/client_input.py), in process: what a broken
body raises, and how it is logged. The real-server cases are in tests/proxy/test_proxy_edge.py."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from gunicorn.http.errors import InvalidChunkSize, NoMoreData

from supervisor_site.client_input import ClientInputError, GuardedInput, QuietClientInputErrors


class Broken(io.BytesIO):
    """A stream that fails as gunicorn's body reader does on a malformed chunk."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def read(self, size: int | None = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize("error", [InvalidChunkSize(b"zz"), NoMoreData(), ConnectionResetError(104, "reset")])
def test_server_and_socket_errors_become_client_input_errors(error):
    guarded = GuardedInput(Broken(error), None)
    with pytest.raises(ClientInputError):
        guarded.read(10)
    with pytest.raises(ClientInputError):  # never read again once broken
        guarded.read(10)
    assert guarded.failure


def test_a_body_shorter_than_its_content_length_is_an_error():
    guarded = GuardedInput(io.BytesIO(b"x" * 10), 100)
    with pytest.raises(ClientInputError, match="90 bytes short"):
        guarded.read()
    chunked = GuardedInput(io.BytesIO(b"abc\ndef"), 50)
    assert chunked.readline() == b"abc\n" and chunked.read(3) == b"def"
    with pytest.raises(ClientInputError):
        chunked.read(1)


def test_a_whole_body_reads_as_usual():
    guarded = GuardedInput(io.BytesIO(b"a=1&b=2"), 7)
    assert guarded.read(3) + guarded.read() == b"a=1&b=2"
    assert guarded.read(5) == b""  # past the end: nothing more was announced
    unbounded = GuardedInput(io.BytesIO(b"line\n"), None)
    assert list(unbounded) == [b"line\n"]


def test_the_log_line_is_info_without_a_traceback():
    try:
        raise ClientInputError("InvalidChunkSize: zz")
    except ClientInputError:
        record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "%s", ("x",), sys.exc_info())
    assert QuietClientInputErrors().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "bad request body" in record.getMessage()
