"""Requests the local cloud's own process makes to it are handed to its server without a socket.

The runner, the in-process Lambda handlers and the state machine's executor live in the process that
serves the local cloud. Over 127.0.0.1 each of their requests was written by urllib3, read and parsed by
the server's HTTP handler in a thread of its own and written back: about 2 ms of the interpreter's
time per request, some 40 requests a round, in the one process every round waits on.

`InProcessTransport` passes such a request to the same WSGI application the server runs, built into
the environment the server's handler (werkzeug's `make_environ`) would have built from the same bytes:
the same signed headers and body, the same IAM evaluation, the same moto dispatch and the same
answer; an application that raises (moto is not thread-safe: a Query racing an UpdateItem can fail)
gets the server's 500, which the SDK retries as it does over HTTP. Only the transport changes. The
agents are processes of their own and keep talking HTTP, as does anything after a `fork` (the
transport answers only the process that installed it).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

SERVER_SOFTWARE = "fedstep-in-process"

log = logging.getLogger(__name__)


class _Body(io.BytesIO):
    """A response body as botocore reads one: whole (`stream`) or by amounts (`read`)."""

    def stream(self, **_: Any) -> Iterable[bytes]:
        contents = self.read()
        while contents:
            yield contents
            contents = self.read()


def _encoded(text: str) -> str:
    """A string as WSGI carries it (bytes as latin-1 code points), as werkzeug's server does."""
    return text.encode().decode("latin1")


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else data
    return b"".join(part.encode() if isinstance(part, str) else part for part in body)


def environ_of(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The WSGI environment moto's server builds for this request (werkzeug's `make_environ`, then
    moto's `MotoRequestHandler.make_environ` for S3 metadata names with underscores), the body already
    whole: a chunked upload arrives de-chunked, with its length."""
    from moto.core.request import (
        PRESERVED_HEADER_NAMES_ENVIRON_KEY,
        environ_key_for_header,
        should_preserve_original_header_name,
    )

    split = urlsplit(url)
    host, _, port = split.netloc.partition(":")
    target = split.path + (f"?{split.query}" if split.query else "")
    environ: dict[str, Any] = {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": split.scheme or "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": _encoded(unquote(split.path)),
        "QUERY_STRING": _encoded(split.query),
        "REQUEST_URI": _encoded(target),
        "RAW_URI": _encoded(target),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": 0,
        "SERVER_NAME": host,
        "SERVER_PORT": port or "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": split.netloc,
    }
    names: dict[str, str] = {}
    values: dict[str, list[str]] = {}
    dashed = {environ_key_for_header(name) for name, _ in headers if "_" not in name}
    for name, value in headers:
        value = value.decode("latin1") if isinstance(value, bytes) else value.replace("\r\n", "")
        key = environ_key_for_header(name)
        if "_" in name:
            if should_preserve_original_header_name(name) and key not in dashed:
                names.setdefault(key, name)
                values.setdefault(key, []).append(value)
            continue
        if key in ("HTTP_TRANSFER_ENCODING", "HTTP_HOST", "CONTENT_LENGTH"):
            continue  # the body is whole; the host is the URL's
        if key in environ and key.startswith("HTTP_"):
            value = f"{environ[key]},{value}"
        environ[key] = value
    for key, key_values in values.items():
        environ[key] = ",".join(key_values)
    environ[PRESERVED_HEADER_NAMES_ENVIRON_KEY] = names
    if body or method not in ("GET", "HEAD", "DELETE"):
        environ["CONTENT_LENGTH"] = str(len(body))
    return environ


class InProcessTransport:
    """Installed on botocore's endpoint: a request to `endpoint` (or `localhost` on its port) from the
    installing process goes to `app` in the calling thread; any other request goes out as before."""

    def __init__(self, app: Any, endpoint: str) -> None:
        self.app = app
        port = urlsplit(endpoint).port
        self.prefixes = (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/")
        self.pid = os.getpid()
        self._original: Any = None
        self.requests = 0
        """Requests answered in process (a count, for tests and diagnosis)."""
        self._count_lock = threading.Lock()

    def serves(self, url: str) -> bool:
        return os.getpid() == self.pid and (url + "/").startswith(self.prefixes)

    def install(self) -> None:
        from botocore.endpoint import Endpoint

        if self._original is not None:
            return
        original = self._original = Endpoint._send
        transport = self

        def _send(endpoint: Any, request: Any) -> Any:
            if transport.serves(request.url):
                return transport.send(request)
            return original(endpoint, request)

        Endpoint._send = _send  # type: ignore[method-assign]

    def uninstall(self) -> None:
        from botocore.endpoint import Endpoint

        if self._original is not None:
            Endpoint._send = self._original  # type: ignore[method-assign]
            self._original = None

    def _answer(self, environ: dict[str, Any], start_response: Any, method: str, app: Any = None) -> bytes:
        chunks = (app or self.app)(environ, start_response)
        try:
            return b"" if method == "HEAD" else b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def send(self, request: Any) -> Any:
        """The application's answer to a botocore `AWSPreparedRequest`, as an `AWSResponse`."""
        from botocore.awsrequest import AWSResponse, HTTPHeaders

        environ = environ_of(request.method, request.url, list(request.headers.items()), _body_bytes(request.body))
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer["status"], answer["headers"] = int(status.split(" ", 1)[0]), headers
            return lambda data: None

        try:
            body = self._answer(environ, start_response, request.method)
        except Exception as exc:  # as werkzeug's server answers an application that raised: a 500, retried
            log.warning(
                "the local cloud failed a request (the SDK retries it): %s: %s", type(exc).__name__, exc, exc_info=True
            )
            from werkzeug.exceptions import InternalServerError

            body = self._answer(environ, start_response, request.method, InternalServerError())
        with self._count_lock:
            self.requests += 1
        headers = HTTPHeaders()
        for name, value in answer["headers"]:
            headers[name] = value
        return AWSResponse(request.url, answer["status"], headers, _Body(body))
