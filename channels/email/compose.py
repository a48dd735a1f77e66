"""Writing outbound mail: threaded, signed reply address, text and HTML."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any

__all__ = ["ReplyTokens", "approval_text", "build_mail", "question_text"]

_RE = re.compile(r"^\s*(re|aw|sv|antw)\s*:\s*", re.IGNORECASE)


class ReplyTokens:
    """`bot+<thread>.<signature>@domain`: a reply address that names its
    thread and cannot be made up or altered without the secret."""

    def __init__(self, secret: str, address: str) -> None:
        self._key = secret.encode()
        self.address = address.lower()
        self.local, _, self.domain = self.address.partition("@")

    def _sign(self, thread_id: str) -> str:
        digest = hmac.new(self._key, f"reply:{thread_id}".encode(), hashlib.sha256).hexdigest()
        return digest[:20]

    def reply_address(self, thread_id: str) -> str:
        return f"{self.local}+{thread_id}.{self._sign(thread_id)}@{self.domain}"

    def thread_of(self, address: str) -> str | None:
        """The thread a reply address names; None if it is not one of ours
        or its signature does not match."""
        local, _, domain = address.lower().partition("@")
        if domain != self.domain or not local.startswith(self.local + "+"):
            return None
        token = local[len(self.local) + 1 :]
        thread_id, _, signature = token.partition(".")
        if not thread_id or not hmac.compare_digest(signature, self._sign(thread_id)):
            return None
        return thread_id

    def is_ours(self, address: str) -> bool:
        a = address.lower()
        return a == self.address or self.thread_of(a) is not None


def reply_subject(subject: str) -> str:
    bare = subject
    while _RE.match(bare):
        bare = _RE.sub("", bare, count=1)
    return f"Re: {bare.strip() or 'threadbot'}"


def question_text(question: str, options: Sequence[str]) -> str:
    lines = [question.strip(), ""]
    if options:
        lines.append("Reply with one of these (the number or the text):")
        lines += [f"  {i}. {o}" for i, o in enumerate(options, 1)]
    else:
        lines.append("Reply to this email with your answer.")
    return "\n".join(lines)


def approval_text(tool: str, arguments: dict[str, Any]) -> str:
    lines = [f"Approval needed before I run {tool}:", ""]
    for k, v in arguments.items():
        lines.append(f"  {k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}")
    lines += [
        "",
        'To run it, reply with "approve" (or "yes") on the first line.',
        'To stop it, reply with "reject" (or "no") and your reason; I will read it.',
    ]
    return "\n".join(lines)


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
