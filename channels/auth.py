"""Who is asking the HTTP server, decided before any body is read.

A request is authenticated by one of:

- `Authorization: Bearer <token>` (the scheme in any case, RFC 7235): the
  admin token (`THREADBOT_API_TOKEN`) or a person's own token
  (`threadbot tokens create`), which carries a scope;
- the web page's session cookie, after sign-in; its writes must also carry
  the session's CSRF token in `X-CSRF-Token`;
- nothing, on loopback with no token and no people configured: the local
  operator (the first run's two commands), recorded as such.

A wrong or expired credential is refused with 401 whatever the body; a scope
too small for the route with 403. The identity rides in the request's scope
for the routes, which turn it into the events' `Source`: who was
authenticated, never what a body claims.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Literal, cast

from starlette.types import ASGIApp, Receive, Scope, Send

from bot import SCOPES, Credentials, People, Source

__all__ = [
    "METRICS_PATH",
    "SCOPES",
    "SESSION_COOKIE",
    "Authenticate",
    "Identity",
    "identity_of",
    "still_valid",
]

SESSION_COOKIE = "threadbot_session"

METRICS_PATH = "/metrics"
"""Prometheus's scrapes: for admins, or for the scrape token alone."""

ScopeName = Literal["read", "answer", "approve", "admin"]

_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Identity:
    auth: str
    """How: `admin-token`, `token:ID`, `session:email`, `session:slack`, `operator`."""
    scope: ScopeName
    person: str | None = None
    """The people directory's id (tokens and sessions name a person)."""
    name: str = ""
    csrf: str | None = None
    """The session's CSRF token, which its writes must carry."""
    secret: str | None = field(default=None, repr=False, compare=False)
    """The person's token or session cookie as it was presented, to ask
    again whether it still holds (`still_valid`); None for the admin token
    and the local operator, which last as long as the server."""

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    @property
    def who(self) -> str:
        """How and whom this request was authenticated as, in one string
        (one person's share of event streams is counted by it)."""
        return f"{self.auth}:{self.person or self.name}"

    def source(self, people: People, claimed: str | None, channel: str = "http") -> Source:
        """The events' source for this identity. An admin may name someone it
        acts for (`claimed`); the source then records both. Anyone else
        naming someone other than themselves is refused before this."""
        if self.admin and claimed and claimed != self.person:
            found = people.find(claimed)
            return Source(
                channel=channel,
                user=claimed,
                person=found.id if found else None,
                name=found.display if found else claimed,
                auth=self.auth,
                admin=True,
                by=self.name,
            )
        found = people.find(self.person)
        return Source(
            channel=channel,
            user=self.person,
            person=found.id if found else None,
            name=found.display if found else self.name,
            auth=self.auth,
            admin=self.admin or None,
        )

    def may_claim(self, people: People, claimed: str | None) -> bool:
        """Whether a body's `user` may stand: absent, this very person, or
        anyone for an admin."""
        if not claimed or self.admin:
            return True
        if claimed == self.person:
            return True
        found = people.find(claimed)
        return found is not None and found.id == self.person


OPERATOR = Identity(auth="operator", scope="admin", name="local operator")
ADMIN_TOKEN = Identity(auth="admin-token", scope="admin", name="admin token")


def still_valid(credentials: Credentials, identity: Identity) -> bool:
    """Whether the credential `identity` was authenticated with still holds:
    a token not revoked nor expired, a session not signed out nor expired.
    One lookup, for what stays open after the request was let in (event
    streams)."""
    if identity.secret is None:
        return True
    if identity.auth.startswith("token:"):
        return credentials.check_token(identity.secret) is not None
    session = credentials.session(identity.secret)
    return session is not None and session.person == identity.person


def identity_of(scope: Scope) -> Identity:
    found = scope.get("state", {}).get("identity")
    assert isinstance(found, Identity), "Authenticate runs before the routes"
    return found


def required_scope(method: str, path: str) -> ScopeName:
    """What a route needs. Cancelling settles what waits for approval, so it
    takes as much as approving. Forking copies a thread's decisions with it
    (an approved call would run again), so it is an admin's."""
    if path == METRICS_PATH:
        # Counts of every thread, not only the reader's.
        return "admin"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if path.endswith(("/approvals", "/cancel")):
        return "approve"
    if path.endswith("/fork"):
        return "admin"
    return "answer"


class Authenticate:
    """Plain ASGI, between the Host/cross-site guard and the body rules, so
    that a wrong credential is refused before its body is read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: Credentials,
        people: People,
        admin_token: str | None,
        local_operator: bool,
        open_paths: tuple[str, ...] = (),
        open_prefixes: tuple[str, ...] = (),
        metrics_token: str | None = None,
    ) -> None:
        self.app = app
        self.metrics_token = metrics_token
        """Opens GET /metrics (a scraper's credential, good for nothing else)."""
        self.credentials = credentials
        self.people = people
        self.admin_token = admin_token
        self.local_operator = local_operator
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = dict(scope["headers"])
        if path == METRICS_PATH and self._scraper(headers):
            await self.app(scope, receive, send)
            return
        identity, problem = self._identify(headers)
        if identity is not None:
            scope.setdefault("state", {})["identity"] = identity
        if path in self.open_paths or path.startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        if identity is None:
            await _refuse(send, 401, problem or "sign in, or send a bearer token")
            return
        method: str = scope["method"]
        needed = required_scope(method, path)
        if SCOPES.index(identity.scope) < SCOPES.index(needed):
            await _refuse(send, 403, f"this token's scope is {identity.scope}; {needed} needed")
            return
        if identity.csrf is not None and method not in ("GET", "HEAD", "OPTIONS"):
            sent = headers.get(b"x-csrf-token", b"").decode("latin-1")
            if not hmac.compare_digest(sent, identity.csrf):
                await _refuse(send, 403, "missing or wrong X-CSRF-Token for this session")
                return
        await self.app(scope, receive, send)

    def _scraper(self, headers: dict[bytes, bytes]) -> bool:
        """Whether the request carries the metrics token."""
        raw = headers.get(b"authorization")
        found = _BEARER.match(raw.decode("latin-1")) if raw is not None else None
        return (
            self.metrics_token is not None
            and found is not None
            and hmac.compare_digest(found[1].encode(), self.metrics_token.encode())
        )

    def _identify(self, headers: dict[bytes, bytes]) -> tuple[Identity | None, str | None]:
        raw = headers.get(b"authorization")
        if raw is not None:
            found = _BEARER.match(raw.decode("latin-1"))
            if found is None:
                return None, "the Authorization header must be: Bearer <token>"
            return self._bearer(found[1]), "wrong, expired or revoked bearer token"
        raw_cookie = headers.get(b"cookie")
        cookie = _cookie(raw_cookie) if raw_cookie is not None else None
        if cookie is not None:
            session = self.credentials.session(cookie)
            if session is not None:
                person = self.people.find(session.person)
                return Identity(
                    auth=session.auth,
                    scope="approve",
                    person=session.person,
                    name=person.display if person else session.person,
                    csrf=session.csrf,
                    secret=cookie,
                ), None
        if self.local_operator:
            return OPERATOR, None
        return None, None

    def _bearer(self, token: str) -> Identity | None:
        if self.admin_token is not None and hmac.compare_digest(
            token.encode(), self.admin_token.encode()
        ):
            return ADMIN_TOKEN
        row = self.credentials.check_token(token)
        if row is None or row.scope not in SCOPES:
            return None
        person = self.people.find(row.person)
        return Identity(
            auth=f"token:{row.id}",
            scope=cast(ScopeName, row.scope),  # one of SCOPES, checked above
            person=person.id if person else row.person,
            name=person.display if person else row.person,
            secret=token,
        )


def _cookie(raw: bytes) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read: the connection cannot carry another request.
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
