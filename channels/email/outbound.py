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
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from bot import Delivery, Source, ThreadBot
from bot.events import (
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    ToolCall,
    UserMessage,
)
from bot.thread import HUMAN_INPUT

from .compose import approval_text, build_mail, question_text, reply_subject, waiting_text
from .recipients import approval_recipients
from .settings import EmailSettings, hostport
from .tokens import ReplyTokens

__all__ = ["Postman", "route_key", "sent_ids"]


def route_key(message_id: str) -> str:
    return f"email:{message_id.lower()}"


def sent_ids(delivered: Delivered) -> list[str]:
    """The Message-IDs of the mails one delivery sent."""
    ids = delivered.refs.get("message_ids") or delivered.refs.get("message_id") or ""
    return ids.split()


def origin_of(events: Sequence[Event]) -> Source:
    return next(e for e in events if isinstance(e, UserMessage)).source


class Postman:
    def __init__(self, bot: ThreadBot, settings: EmailSettings, tokens: ReplyTokens) -> None:
        self.bot = bot
        self.settings = settings
        self.tokens = tokens

    def letters(self, events: Sequence[Event], seq: int) -> list[tuple[str, str]]:
        """(recipient, text) for each mail that delivers `events[seq]`."""
        origin = origin_of(events)
        event = events[seq]
        if isinstance(event, ToolCall) and event.name == HUMAN_INPUT:
            options = [str(o) for o in event.arguments.get("options") or []]
            text = question_text(str(event.arguments.get("question", "")), options)
        elif isinstance(event, ToolCall):
            recipients, deciders = approval_recipients(self.bot.people, events, seq, origin)
            return [
                (
                    r.address,
                    approval_text(event.name, event.arguments)
                    if r.decides
                    else waiting_text(event.name, event.arguments, deciders),
                )
                for r in recipients
            ]
        elif isinstance(event, AssistantMessage):
            text = event.text
        elif isinstance(event, Error):
            text = f"I had to stop: {event.message}"
        else:
            raise ValueError(f"nothing to deliver at #{seq} ({event.type})")
        return [(origin.user or "", text)]

    async def deliver(self, thread_id: str, events: Sequence[Event], seq: int) -> Delivery:
        ids, to = [], []
        letters = self.letters(events, seq)
        if not letters:
            raise ValueError(f"nobody to mail #{seq} to")
        for recipient, text in letters:
            message_id = self.tokens.message_id(thread_id, seq, recipient)
            reply_to = self.tokens.reply_address(thread_id, seq, recipient)
            await self.send(self.mail(events, recipient, text, message_id, reply_to))
            ids.append(message_id)
            to.append(recipient)
        refs = {"message_id": ids[0], "message_ids": " ".join(ids), "to": " ".join(to)}
        return Delivery(refs=refs, routes=tuple(route_key(i) for i in ids))

    def mail(
        self,
        events: Sequence[Event],
        recipient: str,
        text: str,
        message_id: str,
        reply_to: str,
        in_reply_to: str | None = None,
    ) -> EmailMessage:
        ids: list[str] = []
        last_inbound: str | None = None
        for e in events:
            if isinstance(e, UserMessage | HumanResponse) and e.source.channel == "email":
                mid = e.source.refs.get("message_id")
                if mid:
                    ids.append(mid)
                    last_inbound = mid
            elif isinstance(e, Delivered) and e.channel == "email" and "message_id" in e.refs:
                ids.append(e.refs["message_id"])
        # The first message and the latest ones: clients thread on either.
        references = ids[:1] + ids[1:][-9:]
        return build_mail(
            sender=self.tokens.address,
            reply_to=reply_to,
            to=[recipient],
            subject=reply_subject(origin_of(events).refs.get("subject", "")),
            text=text,
            message_id=message_id,
            in_reply_to=in_reply_to or last_inbound,
            references=references,
        )

    async def explain_choices(
        self, events: Sequence[Event], recipient: str, reply_to: str, in_reply_to: str, tool: str
    ) -> None:
        text = (
            f"I could not read a decision in your reply: {tool} is waiting for "
            'approval.\n\nReply with "approve" (or "yes") on the first line to run it, '
            'or "reject" (or "no") followed by your reason.'
        )
        # Not a delivery to record, so not one to resend: any unique id will do.
        message_id = f"<tb.help.{secrets.token_hex(10)}@{self.tokens.domain or 'threadbot'}>"
        await self.send(self.mail(events, recipient, text, message_id, reply_to, in_reply_to))

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
