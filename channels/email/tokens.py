"""Signed reply addresses and Message-IDs: what a reply must prove.

Each mail the bot sends goes to one recipient and carries a Reply-To of its
own, `bot+<thread>.<seq>.<sig>@domain`, where `sig` is an HMAC of the thread,
the event it delivered and the recipient's address. A reply to it is taken as
that recipient's answer to that call only when its From is that recipient: the
address cannot be made up, moved to another thread or call, or used by
someone it was not sent to.

Message-IDs are HMACs of the same three things: a resend after a crash is the
same mail (clients show it once), and nobody outside can predict one to forge
an `In-Reply-To`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from bot import UsageError

__all__ = ["ReplyAddress", "ReplyTokens"]

_SIG_CHARS = 16
"""Base32 characters of signature: 80 bits, beyond guessing over SMTP."""
_TOKEN = re.compile(r"^([0-9a-z_-]{1,32})\.(\d{1,9})\.([a-z2-7]{16})$")  # 16: _SIG_CHARS
_LOCAL_MAX = 64  # RFC 5321: a longer local part may be refused on the way


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """A reply address as read: not yet checked against a sender."""

    thread_id: str
    seq: int
    signature: str


class ReplyTokens:
    def __init__(self, secret: str, address: str) -> None:
        self._key = secret.encode()
        self.address = address.lower()
        self.local, _, self.domain = self.address.partition("@")
        # Room for a 16-character thread id and a seq of up to 7 digits.
        room = _LOCAL_MAX - (1 + 16 + 1 + 7 + 1 + _SIG_CHARS)
        if len(self.local) > room:
            raise UsageError(
                f"THREADBOT_EMAIL {address!r}: the part before @ is too long to carry "
                f"reply tokens (at most {room} characters)"
            )

    def _mac(self, purpose: str, thread_id: str, seq: int, recipient: str) -> bytes:
        text = f"{purpose}|{thread_id}|{seq}|{recipient.lower()}"
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()

    def _signature(self, thread_id: str, seq: int, recipient: str) -> str:
        mac = self._mac("reply", thread_id, seq, recipient)
        return base64.b32encode(mac).decode().lower()[:_SIG_CHARS]

    def reply_address(self, thread_id: str, seq: int, recipient: str) -> str:
        sig = self._signature(thread_id, seq, recipient)
        return f"{self.local}+{thread_id}.{seq}.{sig}@{self.domain}"

    def message_id(self, thread_id: str, seq: int, recipient: str) -> str:
        tag = self._mac("message-id", thread_id, seq, recipient).hex()[:20]
        return f"<tb.{thread_id}.{seq}.{tag}@{self.domain or 'threadbot'}>"

    def read(self, address: str) -> ReplyAddress | None:
        """The thread and seq a reply address names, if it has the shape of
        one of ours (its signature is checked by `signed_for`)."""
        a = address.lower()
        if not a.isascii():
            return None
        local, _, domain = a.rpartition("@")
        if domain != self.domain or not local.startswith(self.local + "+"):
            return None
        found = _TOKEN.match(local[len(self.local) + 1 :])
        if found is None:
            return None
        return ReplyAddress(found.group(1), int(found.group(2)), found.group(3))

    def signed_for(self, reply: ReplyAddress, recipient: str) -> bool:
        """Whether `reply` is the address made for `recipient`."""
        if not recipient.isascii():
            return False  # compare_digest takes ASCII only; ours are ASCII
        expected = self._signature(reply.thread_id, reply.seq, recipient)
        return hmac.compare_digest(reply.signature, expected)

    def is_plain(self, address: str) -> bool:
        return address.lower() == self.address
