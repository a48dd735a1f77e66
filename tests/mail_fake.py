"""A local SMTP relay that keeps what the bot sends, and mail as clients write it."""

from __future__ import annotations

import email
import email.policy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from .fakes import free_port


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class CaptureRelay:
    """The SMTP relay the bot sends through: a real aiosmtpd server."""

    messages: list[Captured] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    login: tuple[str, str] | None = None
    """Require this user and password (AUTH over the plain connection)."""
    logins: list[str] = field(default_factory=list)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = self.login is not None and (data.login.decode(), data.password.decode()) == self.login
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.lock:
            self.messages.append(Captured(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10) -> list[Captured]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.messages)} mails relayed, wanted {count}")
            time.sleep(0.02)

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [c.message for c in self.messages if address in c.rcpt_tos]

    @contextmanager
    def serve(self) -> Iterator[CaptureRelay]:
        self.port = free_port()
        auth: dict[str, Any] = {}
        if self.login is not None:
            auth = {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        controller = Controller(self, hostname="127.0.0.1", port=self.port, **auth)
        controller.start()
        try:
            yield self
        finally:
            controller.stop()


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


# How clients quote what they answer: (name, make(body, quoted) -> MIME bytes)
def _mime(
    headers: dict[str, str], body: str, *, subtype: str = "plain", charset: str = "utf-8"
) -> bytes:
    msg = EmailMessage()
    for k, v in headers.items():
        msg[k] = v
    msg.set_content(body, subtype=subtype, charset=charset)
    return msg.as_bytes()


def reply_bytes(
    style: str,
    *,
    sender: str,
    to: str,
    answer: str,
    quoted: EmailMessage,
    message_id: str,
) -> bytes:
    """A reply to `quoted` as the client `style` writes it."""
    headers = {
        "From": f"Ann Example <{sender}>",
        "To": to,
        "Subject": "Re: " + str(quoted["Subject"]).removeprefix("Re: "),
        "Message-ID": message_id,
        "In-Reply-To": str(quoted["Message-ID"]),
        "References": f"{quoted.get('References', '')} {quoted['Message-ID']}".strip(),
        "Date": "Mon, 30 Nov 2026 06:20:00 +0000",
    }
    old = text_of(quoted).strip()
    old_quoted = "\n".join("> " + line for line in old.splitlines())
    if style == "gmail":
        body = (
            f"{answer}\n\nOn Mon, Nov 30, 2026 at 6:13 AM threadbot <{to}> wrote:\n\n{old_quoted}\n"
        )
    elif style == "outlook":
        body = (
            f"{answer}\r\n\r\nRegards,\r\nAnn\r\n\r\n-----Original Message-----\r\n"
            f"From: threadbot <{to}>\r\nSent: Monday, November 30, 2026 6:13 AM\r\n"
            f"To: Ann Example <{sender}>\r\nSubject: {quoted['Subject']}\r\n\r\n{old}\r\n"
        )
    elif style == "outlook_web":
        body = (
            f"{answer}\n\n________________________________\nFrom: threadbot <{to}>\n"
            f"Sent: Monday, November 30, 2026 06:13\nTo: Ann Example <{sender}>\n"
            f"Subject: {quoted['Subject']}\n\n{old}\n"
        )
    elif style == "apple":
        body = (
            f"{answer}\n\nSent from my iPhone\n\n"
            f"> On 30 Nov 2026, at 06:13, threadbot <{to}> wrote:\n> \n{old_quoted}\n"
        )
    elif style == "thunderbird":
        body = (
            f"{answer}\n\n-- \nAnn Example\nHead of Ops\n\n"
            f"On 30/11/2026 06:13, threadbot wrote:\n{old_quoted}\n"
        )
    elif style == "gmail_html":
        html = (
            f'<div dir="ltr">{answer}</div><br><div class="gmail_quote"><div dir="ltr" '
            f'class="gmail_attr">On Mon, Nov 30, 2026 at 6:13 AM threadbot &lt;{to}&gt; '
            "wrote:<br></div>"
            f'<blockquote class="gmail_quote">{old}</blockquote></div>'
        )
        return _mime(headers, html, subtype="html")
    elif style == "outlook_html":
        html = (
            f"<html><body><div>{answer}</div><div><br></div>"
            f'<hr style="display:inline-block;width:98%"><div id="divRplyFwdMsg" dir="ltr">'
            f"<b>From:</b> threadbot &lt;{to}&gt;<br><b>Sent:</b> Monday, November 30, 2026 06:13"
            f"</div><div>{old}</div></body></html>"
        )
        return _mime(headers, html, subtype="html")
    elif style == "apple_html":
        html = (
            f'<html><body><div>{answer}</div><div><br><blockquote type="cite">'
            f"<div>On 30 Nov 2026, at 06:13, threadbot wrote:</div><div>{old}</div>"
            "</blockquote></div></body></html>"
        )
        return _mime(headers, html, subtype="html")
    elif style == "latin1":
        return _mime(headers, f"{answer}\n\n{old_quoted}\n", charset="iso-8859-1")
    else:
        raise ValueError(style)
    return _mime(headers, body)
