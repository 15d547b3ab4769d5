"""What the service refuses before a request reaches an endpoint: a missing or wrong API key (401), a body over the
size limit (413, before it is read whole). Both answer in the app's one-line JSON shape, ``{"error": "..."}``.

The key comes from ``serve --api-key`` or, preferably, the environment variable ``DIPAIR_API_KEY`` (a command-line
argument is visible to every user of the machine in ``ps``). It reaches ``serve --workers N``'s worker processes
through their environment only; it is never logged, echoed in an answer, or written into the options JSON.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dipair_rerank.errors import DiPairError

API_KEY_ENV = "DIPAIR_API_KEY"
"""The API key, for ``serve`` (preferred over ``--api-key``) and, set by the main process, for its workers."""

OPEN_PATHS = frozenset({"/health"})  # answered without the key: load balancers and orchestrators probe it


def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in the app's shape (compact JSON, one line)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ----- the API key --------------------------------------------------------------------------------------------------
def check_api_key(key: str, source: str) -> str:
    """``key`` if it can travel in an Authorization header (visible ASCII, no spaces), else a DiPairError that names
    ``source`` but never the key."""
    if not key:
        raise DiPairError(f"{source} is empty: give a key, or leave it unset to serve without one")
    if not all("!" <= ch <= "~" for ch in key):
        raise DiPairError(f"{source} must be visible ASCII characters without spaces (it travels in an HTTP header)")
    return key


def resolve_api_key(argument: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from ``--api-key`` if given, else from ``DIPAIR_API_KEY``; None when neither is set."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if argument is not None:
        return check_api_key(argument, "--api-key")
    if API_KEY_ENV in environ:
        return check_api_key(environ[API_KEY_ENV], API_KEY_ENV)
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only takes connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """One line when the service listens beyond loopback without a key; None otherwise."""
    if api_key is not None or is_loopback(host):
        return None
    return (f"warning: listening on {host} without an API key: anyone who can reach this port can use the service "
            f"(set {API_KEY_ENV}, or --api-key)")


class RequireKey:
    """Answer 401 unless the request carries ``Authorization: Bearer <key>``; ``OPEN_PATHS`` need no key.

    Checked before the body is read. The comparison takes the same time wherever the first differing byte is
    (``hmac.compare_digest``); the token received is never echoed or logged."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self._expected = api_key.encode("ascii")
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope["headers"])
        if token is None:
            message = "missing API key: send the header Authorization: Bearer <key>"
        elif not hmac.compare_digest(token, self._expected):
            message = "wrong API key"
        else:
            await self.app(scope, receive, send)
            return
        await refuse(401, message, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


# ----- the body size ------------------------------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    """Raised while reading a body that has passed the limit: an HTTPException, so that FastAPI's body parsing
    passes it on as a 413 (any other exception there becomes a 400)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, body_limit_message(max_bytes), headers={"Connection": "close"})


def body_limit_message(max_bytes: int) -> str:
    return f"request body over the limit of {max_bytes} bytes (--max-body-bytes)"


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length before reading any of it, else (a
    chunked body) as soon as what has been read passes the limit, never holding more than the limit and one chunk.

    The answer says ``Connection: close``: the rest of the body is not read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await refuse(413, body_limit_message(self.max_bytes), headers={"Connection": "close"})(
                scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return event

        async def watched(event: Any) -> None:
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (which answers it itself)
            if started:
                raise
            await refuse(413, str(exc.detail), headers=exc.headers)(scope, receive, send)
