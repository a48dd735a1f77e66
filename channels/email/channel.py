"""The email channel: an SMTP server in, an SMTP relay out.

Inbound, the bot's address launches threads; replies come back to a signed
reply address (`bot+<thread>.<signature>@domain`) or quote a Message-ID the bot
sent. A mail is parsed, checked and appended before the server answers 250,
so an accepted mail is never lost; the agent runs after. Refusals write
nothing: an unknown or forged address at RCPT, a sender who may not answer at
DATA. Automatic mail (out-of-office, bounces, reports) is accepted and dropped
without a reply, so two machines never talk in a loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import secrets
import smtplib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from bot import Delivery, Refused, Source, ThreadBot
from bot.events import (
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    ToolCall,
    UserMessage,
)
from bot.thread import HUMAN_INPUT, Pending
from store import EventStore

from .compose import ReplyTokens, approval_text, build_mail, question_text, reply_subject
from .parse import InboundMail, parse_mail

__all__ = ["EmailChannel", "EmailSettings"]

log = logging.getLogger("threadbot.email")

_APPROVE = {"approve", "approved", "yes", "y", "ok", "lgtm"}
_REJECT = {"reject", "rejected", "no", "n", "deny", "denied"}
_FIRST_WORD = re.compile(r"^\s*([A-Za-z]+)[\s.,:;!-]*(.*)$", re.DOTALL)


def _hostport(value: str, default_port: int) -> tuple[str, int]:
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
    approvers: tuple[str, ...] = ()
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
        approvers = env.get("THREADBOT_EMAIL_APPROVERS", "")
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
            approvers=tuple(a.strip().lower() for a in approvers.split(",") if a.strip()),
            outbox=env.get("THREADBOT_OUTBOX") or outbox or cls.outbox,
        )

    def secret_from(self, store: EventStore) -> str:
        return self.secret or store.meta("email_secret", secrets.token_hex(32))


def route_key(message_id: str) -> str:
    return f"email:{message_id.lower()}"


class EmailChannel:
    name = "email"

    def __init__(self, bot: ThreadBot, settings: EmailSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.tokens = ReplyTokens(settings.secret_from(bot.store), settings.address)
        self._server: asyncio.AbstractServer | None = None

    # -- the SMTP server ----------------------------------------------------

    async def start(self) -> None:
        host, port = _hostport(self.settings.listen, 8025)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self,
                data_size_limit=self.settings.max_bytes,
                enable_SMTPUTF8=True,
                hostname=self.tokens.domain or "threadbot",
                ident="threadbot",
            ),
            host,
            port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.tokens.is_ours(address):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode()
        try:
            mail = await asyncio.to_thread(parse_mail, raw, return_path=envelope.mail_from)
        except Exception:
            log.exception("unreadable mail from %s", envelope.mail_from)
            return "554 5.6.0 The message could not be read"
        try:
            return await self._receive(mail, list(envelope.rcpt_tos))
        except Exception:
            # A bug: say so to the sender's server, which will retry later.
            log.exception("mail %s from %s failed", mail.message_id, mail.sender)
            return "451 4.3.0 Temporary failure, please retry"

    # -- routing --------------------------------------------------------------

    def _thread_of(self, mail: InboundMail, rcpts: Sequence[str]) -> str | None:
        for address in rcpts:
            if (thread_id := self.tokens.thread_of(address)) is not None:
                return thread_id
        for message_id in (*mail.in_reply_to, *reversed(mail.references)):
            if (thread_id := self.bot.store.route(route_key(message_id))) is not None:
                return thread_id
        return None

    async def _receive(self, mail: InboundMail, rcpts: list[str]) -> str:
        if mail.auto:
            log.info(
                "dropped automatic mail %s from %s: %s", mail.message_id, mail.sender, mail.auto
            )
            return "250 2.0.0 Accepted (automatic mail: no reply)"
        if not mail.sender:
            return "550 5.1.7 The message has no sender address"
        key = route_key(mail.message_id)
        if self.bot.store.find_key(key) is not None:
            return "250 2.0.0 Already received"
        source = Source(
            channel=self.name,
            user=mail.sender,
            name=mail.sender_name or None,
            refs={"message_id": mail.message_id, "subject": mail.subject},
        )
        thread_id = self._thread_of(mail, rcpts)
        if thread_id is None:
            if not mail.text:
                return "550 5.6.0 The message has no text"
            await self.bot.launch(mail.text, source=source, key=key, routes=[key])
            return "250 2.0.0 Accepted"
        if self.bot.store.thread(thread_id) is None:
            return "550 5.1.1 No such conversation"
        view = self.bot.get(thread_id)
        target = _replied_call(view.events, mail) or _open_call(view.state.pending)
        try:
            if target is not None and target.name == HUMAN_INPUT:
                options = [str(o) for o in target.arguments.get("options") or []]
                text, option = _answer(mail.text, options)
                await self.bot.respond(
                    thread_id, text, call_id=target.call_id, option=option, source=source, key=key
                )
            elif target is not None:
                decision = _decision(mail.text)
                if decision is None:
                    self.bot.check(thread_id, "approval", call_id=target.call_id, source=source)
                    await self._explain_choices(thread_id, mail, target.name)
                    return "250 2.0.0 Accepted (not a decision: the choices were sent)"
                approved, comment = decision
                await self.bot.decide(
                    thread_id,
                    approved,
                    comment=comment,
                    call_id=target.call_id,
                    source=source,
                    key=key,
                )
            else:
                if not mail.text:
                    return "550 5.6.0 The message has no text"
                await self.bot.send(thread_id, mail.text, source=source, key=key)
        except Refused as e:
            return f"550 5.7.1 {_one_line(str(e))}"
        return "250 2.0.0 Accepted"

    # -- outbound ---------------------------------------------------------------

    async def deliver(
        self, thread_id: str, events: Sequence[Event], seq: int, *, fresh: bool = True
    ) -> Delivery:
        # SMTP cannot be asked what it delivered: a resend after a crash
        # carries the same Message-ID, which mail clients take as one mail.
        origin = next(e for e in events if isinstance(e, UserMessage)).source
        event = events[seq]
        to = [origin.user or ""]
        if isinstance(event, ToolCall) and event.name == HUMAN_INPUT:
            options = [str(o) for o in event.arguments.get("options") or []]
            text = question_text(str(event.arguments.get("question", "")), options)
        elif isinstance(event, ToolCall):
            text = approval_text(event.name, event.arguments)
            to += [a for a in (event.approvers or self.settings.approvers) if "@" in a]
        elif isinstance(event, AssistantMessage):
            text = event.text
        elif isinstance(event, Error):
            text = f"I had to stop: {event.message}"
        else:
            raise ValueError(f"nothing to deliver at #{seq} ({event.type})")
        message_id = f"<tb.{thread_id}.{seq}@{self.tokens.domain or 'threadbot'}>"
        msg = self._mail(thread_id, events, origin, list(dict.fromkeys(to)), text, message_id)
        await self._send(msg)
        return Delivery(refs={"message_id": message_id}, routes=(route_key(message_id),))

    def _mail(
        self,
        thread_id: str,
        events: Sequence[Event],
        origin: Source,
        to: list[str],
        text: str,
        message_id: str,
        in_reply_to: str | None = None,
    ) -> EmailMessage:
        ids: list[str] = []
        last_inbound: str | None = None
        for e in events:
            if isinstance(e, UserMessage | HumanResponse) and e.source.channel == self.name:
                mid = e.source.refs.get("message_id")
                if mid:
                    ids.append(mid)
                    last_inbound = mid
            elif isinstance(e, Delivered) and e.channel == self.name and "message_id" in e.refs:
                ids.append(e.refs["message_id"])
        # The first message and the latest ones: clients thread on either.
        references = ids[:1] + ids[1:][-9:]
        return build_mail(
            sender=self.tokens.address,
            reply_to=self.tokens.reply_address(thread_id),
            to=to,
            subject=reply_subject(origin.refs.get("subject", "")),
            text=text,
            message_id=message_id,
            in_reply_to=in_reply_to or last_inbound,
            references=references,
        )

    async def _explain_choices(self, thread_id: str, mail: InboundMail, tool: str) -> None:
        text = (
            f"I could not read a decision in your reply: {tool} is waiting for "
            'approval.\n\nReply with "approve" (or "yes") on the first line to run it, '
            'or "reject" (or "no") followed by your reason.'
        )
        events = self.bot.get(thread_id).events
        origin = next(e for e in events if isinstance(e, UserMessage)).source
        message_id = (
            f"<tb.{thread_id}.help.{secrets.token_hex(6)}@{self.tokens.domain or 'threadbot'}>"
        )
        msg = self._mail(thread_id, events, origin, [mail.sender], text, message_id)
        msg.replace_header("In-Reply-To", mail.message_id) if msg[
            "In-Reply-To"
        ] else msg.add_header("In-Reply-To", mail.message_id)
        await self._send(msg)

    async def send_sign_in(self, address: str, link: str) -> None:
        """A web page sign-in link, on its own: no thread, no reply address."""
        msg = EmailMessage()
        msg["From"] = self.tokens.address
        msg["To"] = address
        msg["Subject"] = "Sign in to threadbot"
        msg["Date"] = email.utils.formatdate(usegmt=True)
        msg["Message-ID"] = (
            f"<tb.sign-in.{secrets.token_hex(8)}@{self.tokens.domain or 'threadbot'}>"
        )
        # Nobody should answer it, least of all an out-of-office responder.
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(
            f"Open this link to sign in to threadbot:\n\n{link}\n\n"
            "It works once, within 15 minutes. If you did not ask to sign in, ignore this mail."
        )
        await self._send(msg)

    async def _send(self, msg: EmailMessage) -> None:
        if self.settings.relay is None:
            await asyncio.to_thread(self._write_outbox, msg)
        else:
            await asyncio.to_thread(self._relay, msg)

    def _relay(self, msg: EmailMessage) -> None:
        assert self.settings.relay is not None
        host, port = _hostport(self.settings.relay, 25)
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


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _replied_call(events: Sequence[Event], mail: InboundMail) -> ToolCall | None:
    """The question or approval request this mail replies to, if it replies
    to one the bot sent (so a late answer is told it is late, and never
    becomes a new message)."""
    sent: dict[str, int] = {
        e.refs["message_id"]: e.of_seq
        for e in events
        if isinstance(e, Delivered) and e.channel == "email" and "message_id" in e.refs
    }
    for message_id in (*mail.in_reply_to, *reversed(mail.references)):
        seq = sent.get(message_id)
        if seq is not None:
            event = events[seq]
            if isinstance(event, ToolCall):
                return event
            return None  # a reply to an answer: a new message
    return None


def _open_call(pending: Pending | None) -> ToolCall | None:
    if pending is None or pending.kind == "result":
        return None
    return ToolCall(
        call_id=pending.call_id,
        name=pending.name,
        arguments=pending.arguments,
        requires_approval=pending.kind == "approval",
    )


def _answer(text: str, options: Sequence[str]) -> tuple[str, str | None]:
    """An answer to a question; a number or the text of an option picks it."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if options and first.rstrip(".)").isdigit():
        n = int(first.rstrip(".)"))
        if 1 <= n <= len(options):
            return options[n - 1], options[n - 1]
    for option in options:
        if first.lower() == option.lower():
            return option, option
    return text, None


def _decision(text: str) -> tuple[bool, str | None] | None:
    """approve/yes → (True, rest); reject/no → (False, the reason); else None."""
    found = _FIRST_WORD.match(text.strip())
    if not found:
        return None
    word, rest = found.group(1).lower(), found.group(2).strip()
    if word in _APPROVE:
        return True, rest or None
    if word in _REJECT:
        return False, rest or None
    return None
