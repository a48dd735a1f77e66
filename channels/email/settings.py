"""The email channel's settings, from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EmailSettings", "hostport"]


def hostport(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class EmailSettings:
    address: str = "bot@localhost"
    """THREADBOT_EMAIL: the bot's address; replies go to address+token."""
    listen: str = "127.0.0.1:8025"
    """THREADBOT_SMTP: where the SMTP server listens."""
    max_bytes: int = 10 * 1024 * 1024
    relay: str | None = None
    """THREADBOT_SMTP_RELAY host:port; unset, outbound mail is written to `outbox`."""
    relay_user: str | None = None
    relay_password: str | None = None
    relay_starttls: bool = False
    secret: str | None = None
    """THREADBOT_SECRET: keys the reply tokens; generated and kept in the database if unset."""
    auth_servid: str | None = None
    """THREADBOT_EMAIL_AUTH_SERVID: the authserv-id (RFC 8601) of the mail
    server in front, whose Authentication-Results headers are believed."""
    outbox: str = "./outbox"
    """THREADBOT_OUTBOX: where outbound mail is written when there is no relay."""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, outbox: str | None = None
    ) -> EmailSettings | None:
        """None when THREADBOT_SMTP is `off`."""
        env = os.environ if env is None else env
        if (env.get("THREADBOT_SMTP") or "").lower() == "off":
            return None
        return cls(
            address=(env.get("THREADBOT_EMAIL") or cls.address).lower(),
            listen=env.get("THREADBOT_SMTP") or cls.listen,
            max_bytes=int(env.get("THREADBOT_SMTP_MAX_BYTES") or cls.max_bytes),
            relay=env.get("THREADBOT_SMTP_RELAY") or None,
            relay_user=env.get("THREADBOT_SMTP_USER") or None,
            relay_password=env.get("THREADBOT_SMTP_PASSWORD") or None,
            relay_starttls=(env.get("THREADBOT_SMTP_STARTTLS") or "").lower()
            in ("1", "true", "yes"),
            secret=env.get("THREADBOT_SECRET") or None,
            auth_servid=(env.get("THREADBOT_EMAIL_AUTH_SERVID") or "").strip() or None,
            outbox=env.get("THREADBOT_OUTBOX") or outbox or cls.outbox,
        )

    @property
    def loopback_only(self) -> bool:
        """Whether the SMTP server listens on this machine only."""
        host = hostport(self.listen, 8025)[0].lower()
        return host in ("localhost", "::1") or host.startswith("127.")
