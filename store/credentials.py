"""API tokens, web sessions and single-use sign-in links.

Rows beside the event log, in the same database. A secret is handed out once
and only its SHA-256 is kept (the secrets are random and long, so a fast hash
is enough: there is nothing to guess). Times are Unix seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from .base import Store

__all__ = ["SCOPES", "Credentials", "Session", "Token"]

SCOPES = ("read", "answer", "approve", "admin")
"""What a token may do; each includes the ones before it."""

TOKEN_PREFIX = "tb_"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    person: str
    scope: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def valid(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Session:
    person: str
    auth: str
    csrf: str
    expires_at: float


class Credentials:
    def __init__(self, store: Store) -> None:
        self.db = store

    # -- API tokens: `tb_<id>_<secret>` ---------------------------------------

    def create_token(self, person: str, scope: str, expires_at: float | None) -> tuple[str, str]:
        """A new token for `person`: returns (id, the token itself)."""
        token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO tokens (id, person, scope, hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [token_id, person, scope, _hash(secret), time.time(), expires_at],
            )
        return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def check_token(self, token: str) -> Token | None:
        """The token's row if `token` is one of ours and still valid."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_id, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
        row = self.db.execute(
            "SELECT id, person, scope, created_at, expires_at, revoked_at, hash FROM tokens "
            "WHERE id = ?",
            [token_id],
        ).fetchone()
        if row is None or not hmac.compare_digest(row[6], _hash(secret)):
            return None
        found = Token(*row[:6])
        return found if found.valid(time.time()) else None

    def tokens(self) -> list[Token]:
        rows = self.db.execute(
            "SELECT id, person, scope, created_at, expires_at, revoked_at FROM tokens "
            "ORDER BY created_at"
        ).fetchall()
        return [Token(*r) for r in rows]

    def revoke(self, token_id: str) -> bool:
        with self.db.atomic():
            cur = self.db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [time.time(), token_id],
            )
        return cur.rowcount == 1

    # -- web sessions --------------------------------------------------------

    def create_session(self, person: str, auth: str, ttl: float) -> tuple[str, Session]:
        """A new session: returns (the cookie's value, the session)."""
        cookie = secrets.token_urlsafe(32)
        session = Session(person, auth, secrets.token_urlsafe(24), time.time() + ttl)
        with self.db.atomic():
            self.db.execute("DELETE FROM sessions WHERE expires_at < ?", [time.time()])
            self.db.execute(
                "INSERT INTO sessions (hash, person, auth, csrf, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [_hash(cookie), session.person, session.auth, session.csrf, session.expires_at],
            )
        return cookie, session

    def session(self, cookie: str) -> Session | None:
        row = self.db.execute(
            "SELECT person, auth, csrf, expires_at FROM sessions WHERE hash = ? AND expires_at > ?",
            [_hash(cookie), time.time()],
        ).fetchone()
        return Session(*row) if row else None

    def end_session(self, cookie: str) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM sessions WHERE hash = ?", [_hash(cookie)])

    # -- single-use sign-in links ----------------------------------------------

    def create_link(self, person: str, ttl: float) -> str:
        secret = secrets.token_urlsafe(32)
        with self.db.atomic():
            self.db.execute("DELETE FROM sign_in_links WHERE expires_at < ?", [time.time()])
            self.db.execute(
                "INSERT INTO sign_in_links (hash, person, expires_at) VALUES (?, ?, ?)",
                [_hash(secret), person, time.time() + ttl],
            )
        return secret

    def use_link(self, secret: str) -> str | None:
        """The person a link signs in, once: a used or expired link is None."""
        now = time.time()
        with self.db.atomic():
            cur = self.db.execute(
                "UPDATE sign_in_links SET used_at = ? "
                "WHERE hash = ? AND used_at IS NULL AND expires_at > ?",
                [now, _hash(secret), now],
            )
            if cur.rowcount != 1:
                return None
            row = self.db.execute(
                "SELECT person FROM sign_in_links WHERE hash = ?", [_hash(secret)]
            ).fetchone()
        return str(row[0])
