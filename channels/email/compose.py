"""Building outbound mail: threaded, signed reply address, text and HTML
(what it says is in `texts`)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate

from .parse import one_line

__all__ = ["build_mail", "reply_subject"]

_RE = re.compile(r"^\s*(re|aw|sv|antw)\s*:\s*", re.IGNORECASE)


def reply_subject(subject: str) -> str:
    # Subjects stored before they were cleaned on the way in are cleaned here.
    bare = one_line(subject)
    while _RE.match(bare):
        bare = _RE.sub("", bare, count=1)
    return f"Re: {bare.strip() or 'threadbot'}"


def _html(text: str) -> str:
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    body = "".join(
        "<p>" + "<br>\n".join(html.escape(line) for line in p.splitlines()) + "</p>\n"
        for p in paragraphs
    )
    return f'<!doctype html>\n<html><body style="font-family: sans-serif">\n{body}</body></html>\n'


def build_mail(
    *,
    sender: str,
    reply_to: str,
    to: Sequence[str],
    subject: str,
    text: str,
    message_id: str,
    in_reply_to: str | None,
    references: Sequence[str],
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = formataddr(("threadbot", sender))
    msg["Reply-To"] = formataddr(("threadbot", reply_to))
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    # An agent's mail: out-of-office responders must not answer it (RFC 3834),
    # nor Exchange's.
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text)
    msg.add_alternative(_html(text), subtype="html")
    return msg
