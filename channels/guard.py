"""What the HTTP server refuses before the API sees a request.

The API's clients are programs (curl, the CLI, SDKs, Slack's servers) and the
operator's own browser on the web page. Any other page that browser opens can
also send requests to the server, so the server tells them apart here:

- `Guard` (outermost) checks the Host header against an allowlist first, so a
  page on a rebound DNS name (an attacker's name that now resolves to
  127.0.0.1) reaches nothing; refuses state-changing requests that a browser
  marks as cross-site (`Origin`, `Sec-Fetch-Site`), and requests for an
  event stream from another site (an EventSource on another page: it could
  not read the stream, but would hold one of the server's streams open for
  as long as that page stays open); and adds security headers
  to every response, so no other page can frame the web page.
- `BodyRules` (innermost, directly around the FastAPI app) caps body size
  before anything is parsed and accepts only JSON bodies, which a page on
  another origin cannot send without a CORS preflight this server never
  grants. Paths that authenticate themselves and take other bodies (Slack's
  form posts) are exempt from the JSON rule, not from the cap.

Authentication goes between the two: it may read the Host and trust it.

A server sees the same few Host and Origin values again and again: what they
parse to is remembered (a bounded cache, so that a flood of made-up names
costs only parsing).

Host names are compared without their ports: a rebinding attacker controls
only the name (their page is served from the server's own port), and behind a
proxy the port the client saw is often not the one the server listens on.

Plain ASGI rather than `@app.middleware("http")`: the decorator form runs each
request in a task group of its own, which leaves a cycle of garbage per
request behind (tests/test_http.py checks for it).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .sse import wants_stream

__all__ = ["BodyRules", "Guard"]

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_SAME_SITE_OK = frozenset({b"same-origin", b"none"})

_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
"""On every response: harmless on JSON, and an error page or a JSON document
opened as a page is then as locked down as the web page itself."""

Origin = tuple[str, str, int]

_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


@lru_cache(maxsize=256)
def host_name(value: str) -> str:
    """The name of a Host header or allowlist entry: lowercase, no port, no
    brackets around an IPv6 address, no trailing dot. "" if it is not one."""
    match = _HOST.fullmatch(value.strip().lower())
    if match is None:
        return _ipv6(value)  # an allowlist entry may be a bare IPv6 address
    name = match[1]
    return _ipv6(name[1:-1]) if name.startswith("[") else name.rstrip(".")


def _ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(value.strip()))
    except ValueError:
        return ""


@lru_cache(maxsize=256)
def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of a URL or an Origin header; None for `null` or
    anything without a scheme and a host."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:
        return None
    name = (parts.hostname or "").rstrip(".")
    if not scheme or not name:
        return None
    return (scheme, name, port)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


_CLOSE = {"Connection": "close"}
"""On every refusal: the server would otherwise read and drop the rest of an
unread body to keep the connection, which a body limit is there to stop."""


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Host allowlist, cross-site refusal and security headers."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str], origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = frozenset(filter(None, map(host_name, hosts)))
        self.origins = frozenset(filter(None, map(origin_of, origins)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and not self._host_allowed(scope):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        if not self._host_allowed(scope):
            await _refuse(send, 400, "this server does not answer to that Host")
            return
        guarded = scope["method"] in STATE_CHANGING or _asks_for_stream(scope)
        if guarded and self._cross_site(scope):
            await _refuse(send, 403, "cross-site requests are refused")
            return
        await self.app(scope, receive, send)

    def _host_allowed(self, scope: Scope) -> bool:
        host = _header(scope, b"host")
        return host is not None and host_name(host.decode("latin-1")) in self.hosts

    def _cross_site(self, scope: Scope) -> bool:
        """A browser says where a request comes from; clients that send
        neither header are not browsers, and not fooled by other pages."""
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site.lower() not in _SAME_SITE_OK:
            return True
        origin = _header(scope, b"origin")
        if origin is None:
            return False
        claimed = origin_of(origin.decode("latin-1"))
        return claimed is None or claimed not in self._own_origins(scope)

    def _own_origins(self, scope: Scope) -> frozenset[Origin]:
        host = (_header(scope, b"host") or b"").decode("latin-1")
        own = origin_of(f"{scope.get('scheme', 'http')}://{host}")
        return self.origins | ({own} if own else set())


def _asks_for_stream(scope: Scope) -> bool:
    accept = _header(scope, b"accept")
    return accept is not None and wants_stream(accept.decode("latin-1"))


def _with_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", ()), *SECURITY_HEADERS]
            message = {**message, "headers": headers}
        await send(message)

    return sending


class BodyRules:
    """A size cap on every body, and JSON bodies only, before any parsing."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _refuse(send, 413, self._too_large())
            return
        if (
            scope["method"] in _BODY_METHODS
            and scope["path"] not in self.exempt
            and not is_json(_header(scope, b"content-type"))
        ):
            await _refuse(send, 415, "the body must be JSON (Content-Type: application/json)")
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> str:
        return f"the body is larger than {self.max_bytes} bytes"

    def _counting(self, receive: Receive) -> Receive:
        """A streamed body is cut off at the cap: reading stops there, and the
        API's exception handler answers 413 (FastAPI re-raises an
        HTTPException met while reading a body)."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self._too_large(), headers=_CLOSE)
            return message

        return counted


def is_json(content_type: bytes | None) -> bool:
    """application/json or application/*+json, parameters allowed: what
    FastAPI parses as JSON."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    kind, _, subtype = media.partition(b"/")
    return kind == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))
