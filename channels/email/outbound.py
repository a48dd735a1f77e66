"""The email channel's outbound half: one mail per recipient, sent once.

Every recipient gets a mail of their own, so that its Reply-To is theirs
alone (see `tokens`). SMTP cannot be asked what it delivered: after a crash a
mail is sent again with the same Message-ID, which clients show once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import smtplib
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path

from bot import (
    Answer,
    ApprovalRequest,
    Delivery,
    Failure,
    Notice,
    Outcome,
    People,
    Question,
)

from .compose import approval_text, build_mail, question_text, reply_subject, waiting_text
from .recipients import approval_recipients
from .settings import EmailSettings, hostport
from .tokens import ReplyTokens

__all__ = ["Postman", "route_key", "sent_ids"]


def route_key(message_id: str) -> str:
    return f"email:{message_id.lower()}"


def sent_ids(refs: Mapping[str, str]) -> list[str]:
    """The Message-IDs of the mails one delivery sent (its refs)."""
    ids = refs.get("message_ids") or refs.get("message_id") or ""
    return ids.split()


class Postman:
    def __init__(self, people: People, settings: EmailSettings, tokens: ReplyTokens) -> None:
        self.people = people
        self.settings = settings
        self.tokens = tokens

    def letters(self, notice: Notice) -> list[tuple[str, str]]:
        """(recipient, text) for each mail that delivers the notice."""
        starter = notice.origin.user or ""
        match notice:
            case Question(text=question, options=options):
                return [(starter, question_text(question, options))]
            case ApprovalRequest(tool=tool, arguments=arguments):
                recipients, deciders = approval_recipients(self.people, notice)
                return [
                    (
                        r.address,
                        approval_text(tool, dict(arguments))
                        if r.decides
                        else waiting_text(tool, dict(arguments), deciders),
                    )
                    for r in recipients
                ]
            case Answer(text=text):
                return [(starter, text)]
            case Failure(message=message):
                return [(starter, f"I had to stop: {message}")]
        raise ValueError(f"email cannot deliver {type(notice).__name__}")

    async def deliver(self, notice: Notice) -> Delivery:
        if isinstance(notice, Outcome):
            return Delivery()  # a mail cannot be taken back; the web page shows the outcome
        ids, to = [], []
        letters = self.letters(notice)
        if not letters:
            raise ValueError(f"nobody to mail #{notice.seq} to")
        for recipient, text in letters:
            message_id = self.tokens.message_id(notice.thread_id, notice.seq, recipient)
            reply_to = self.tokens.reply_address(notice.thread_id, notice.seq, recipient)
            await self.send(self.mail(notice, recipient, text, message_id, reply_to))
            ids.append(message_id)
            to.append(recipient)
        refs = {"message_id": ids[0], "message_ids": " ".join(ids), "to": " ".join(to)}
        return Delivery(refs=refs, routes=tuple(route_key(i) for i in ids))

    def mail(
        self,
        notice: Notice,
        recipient: str,
        text: str,
        message_id: str,
        reply_to: str,
        in_reply_to: str | None = None,
    ) -> EmailMessage:
        ids: list[str] = []
        last_inbound: str | None = None
        for said in notice.trail:
            mid = said.refs.get("message_id")
            if mid:
                ids.append(mid)
                if said.inbound:
                    last_inbound = mid
        # The first message and the latest ones: clients thread on either.
        references = ids[:1] + ids[1:][-9:]
        return build_mail(
            sender=self.tokens.address,
            reply_to=reply_to,
            to=[recipient],
            subject=reply_subject(notice.origin.refs.get("subject", "")),
            text=text,
            message_id=message_id,
            in_reply_to=in_reply_to or last_inbound,
            references=references,
        )

    async def explain_choices(
        self, request: ApprovalRequest, recipient: str, reply_to: str, in_reply_to: str
    ) -> None:
        text = (
            f"I could not read a decision in your reply: {request.tool} is waiting for "
            'approval.\n\nReply with "approve" (or "yes") on the first line to run it, '
            'or "reject" (or "no") followed by your reason.'
        )
        # Not a delivery to record, so not one to resend: any unique id will do.
        message_id = f"<tb.help.{secrets.token_hex(10)}@{self.tokens.domain or 'threadbot'}>"
        await self.send(self.mail(request, recipient, text, message_id, reply_to, in_reply_to))

    async def send(self, msg: EmailMessage) -> None:
        if self.settings.relay is None:
            await asyncio.to_thread(self._write_outbox, msg)
        else:
            await asyncio.to_thread(self._relay, msg)

    def _relay(self, msg: EmailMessage) -> None:
        assert self.settings.relay is not None
        host, port = hostport(self.settings.relay, 25)
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            if self.settings.relay_starttls:
                smtp.starttls()
            if self.settings.relay_user:
                smtp.login(self.settings.relay_user, self.settings.relay_password or "")
            smtp.send_message(msg, from_addr=self.tokens.address)

    def _write_outbox(self, msg: EmailMessage) -> None:
        folder = Path(self.settings.outbox)
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9.@-]", "_", str(msg["Message-ID"]).strip("<>"))
        (folder / f"{name}.eml").write_bytes(msg.as_bytes())
