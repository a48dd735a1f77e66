"""The email channel's outbound half: one mail per recipient, sent once.

Every recipient gets a mail of their own, so that its Reply-To is theirs
alone (see `tokens`). SMTP cannot be asked what it delivered: after a crash a
mail is sent again with the same Message-ID, which clients show once.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path

from bot import (
    Answer,
    ApprovalRequest,
    Cancellation,
    Delivery,
    Failure,
    FollowUp,
    Notice,
    Outcome,
    People,
    Person,
    Question,
)

from .compose import build_mail, reply_subject
from .recipients import approval_recipients, email_source
from .settings import EmailSettings, hostport
from .texts import (
    approval_text,
    asked_too,
    cancelled_text,
    escalated_note,
    question_text,
    reminder_text,
    started_where,
    waiting_text,
)
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

    def reaches(self, person: Person) -> bool:
        """Whether mail reaches this person: they have an address."""
        return bool(person.emails)

    def letters(self, notice: Notice) -> list[tuple[str, str]]:
        """(recipient, text) for each mail that delivers the notice."""
        if not notice.home:
            return self._elsewhere(notice)
        starter = notice.origin.user or ""
        match notice:
            case Question():
                return [(starter, question_text(notice))]
            case ApprovalRequest():
                recipients, deciders = approval_recipients(self.people, notice)
                return [
                    (
                        r.address,
                        approval_text(notice) if r.decides else waiting_text(notice, deciders),
                    )
                    for r in recipients
                ]
            case FollowUp(kind="reminder", request=request):
                return [(a, reminder_text(request)) for a in self._addresses(notice.to)]
            case FollowUp(request=request):
                # The people it was escalated to get the whole request; the
                # person who asked hears who else was asked.
                asked = self._addresses(notice.to)
                out = [(a, self._request_text(request, a, [asked_too(request)])) for a in asked]
                if starter and starter not in asked:
                    out.append((starter, escalated_note(request, notice.named)))
                return out
            case Cancellation(by=by, reason=reason):
                return [(starter, cancelled_text(by, reason))]
            case Answer(text=text):
                return [(starter, text)]
            case Failure(message=message):
                return [(starter, f"I had to stop: {message}")]
        raise ValueError(f"email cannot deliver {type(notice).__name__}")

    def _elsewhere(self, notice: Notice) -> list[tuple[str, str]]:
        """For a thread that started on another channel: a mail to each
        person it reaches by mail, saying where it started and who asked."""
        lead = [started_where(notice.origin)]
        out = []
        for person in notice.reach:
            if not person.emails:
                continue
            address = person.emails[0]
            match notice:
                case FollowUp(kind="reminder", request=request):
                    text = reminder_text(request, lead=lead)
                case FollowUp(request=request):
                    text = self._request_text(request, address, [*lead, asked_too(request)])
                case Question() | ApprovalRequest():
                    text = self._request_text(notice, address, lead)
                case _:
                    raise ValueError(
                        f"email mails no {type(notice).__name__} outside the thread's conversation"
                    )
            out.append((address, text))
        return out

    def _request_text(
        self, request: Question | ApprovalRequest, address: str, lead: list[str]
    ) -> str:
        if isinstance(request, Question):
            return question_text(request, lead=lead)
        if request.may_decide(email_source(self.people, address, auth="email:signed")):
            return approval_text(request, lead=lead)
        deciders = approval_recipients(self.people, request)[1]
        return waiting_text(request, deciders, lead=lead, home=request.home)

    def _addresses(self, specs: tuple[str, ...]) -> list[str]:
        """The address of each person `specs` name who has one."""
        return [p.emails[0] for p in self.people.expand(specs) if p.emails]

    async def deliver(self, notice: Notice) -> Delivery:
        if isinstance(notice, Outcome) or (isinstance(notice, Cancellation) and not notice.home):
            return Delivery()  # a mail cannot be taken back; the web page shows the outcome
        ids, to = [], []
        letters = self.letters(notice)
        if not letters:
            if isinstance(notice, FollowUp):
                return Delivery()  # the people it reminds are on other channels
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
        self, notice: Notice, recipient: str, text: str, message_id: str, reply_to: str
    ) -> EmailMessage:
        if notice.home:
            subject = reply_subject(notice.origin.refs.get("subject", ""))
            references, in_reply_to = self._conversation(notice)
        else:
            # Not in a conversation of theirs: a reminder or escalation
            # follows the request mail this person got, if any.
            request = notice.request if isinstance(notice, FollowUp) else notice
            assert isinstance(request, Question | ApprovalRequest)
            subject = (
                f"Approval needed: {request.tool}"
                if isinstance(request, ApprovalRequest)
                else "A question for you"
            )
            references, in_reply_to = [], None
            if request is not notice:
                subject = f"Re: {subject}"
                first = self.tokens.message_id(notice.thread_id, request.seq, recipient)
                references, in_reply_to = [first], first
        return build_mail(
            sender=self.tokens.address,
            reply_to=reply_to,
            to=[recipient],
            subject=subject,
            text=text,
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
        )

    @staticmethod
    def _conversation(notice: Notice) -> tuple[list[str], str | None]:
        """References and In-Reply-To that keep a mail in the thread's conversation."""
        ids: list[str] = []
        last_inbound: str | None = None
        for said in notice.trail:
            mid = said.refs.get("message_id")
            if mid:
                ids.append(mid)
                if said.inbound:
                    last_inbound = mid
        # The first message and the latest ones: clients thread on either.
        return ids[:1] + ids[1:][-9:], last_inbound

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
