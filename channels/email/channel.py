"""The email channel: an SMTP server in, an SMTP relay out.

Inbound, a mail to the bot's address starts a thread (from the senders
THREADBOT_EMAIL_SENDERS allows). Answers and decisions come only to the
signed reply address the question was sent with, from the person it was sent
to (see `tokens`); a mail found only by its In-Reply-To/References adds a
message from one of the thread's people, never an answer. A mail is parsed,
checked and appended before the server answers 250, so an accepted mail is
never lost; the agent runs after. Refusals write nothing. Automatic mail
(out-of-office, bounces, reports) is accepted and dropped without a reply, so
two machines never talk in a loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from collections.abc import Sequence
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP, Envelope, Session

from bot import Delivery, Refused, Source, ThreadBot
from bot.events import AssistantMessage, Delivered, Error, Event, ToolCall
from bot.thread import HUMAN_INPUT

from .outbound import Postman, route_key, sent_ids
from .parse import InboundMail, dmarc_failed, parse_mail
from .recipients import email_source, is_participant
from .settings import EmailSettings, hostport
from .tokens import ReplyAddress, ReplyTokens

__all__ = ["EmailChannel"]

log = logging.getLogger("threadbot.email")

_APPROVE = {"approve", "approved", "yes", "y", "ok", "lgtm"}
_REJECT = {"reject", "rejected", "no", "n", "deny", "denied"}
_FIRST_WORD = re.compile(r"^\s*([A-Za-z]+)[\s.,:;!-]*(.*)$", re.DOTALL)

_USE_REPLY_TO = (
    "550 5.7.1 Answers and decisions are taken only as a reply to the address "
    "the request came from (its Reply-To); nothing was recorded"
)


class EmailChannel:
    name = "email"

    def __init__(self, bot: ThreadBot, settings: EmailSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.tokens = ReplyTokens(settings.secret_from(bot.store), settings.address)
        self.postman = Postman(bot, settings, self.tokens)
        self._server: asyncio.AbstractServer | None = None

    # -- the SMTP server ----------------------------------------------------

    async def start(self) -> None:
        host, port = hostport(self.settings.listen, 8025)
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
        # Ours are ASCII: anything else is simply not a mailbox here.
        if not address.isascii() or "@" not in address:
            return "550 5.1.1 No such mailbox here"
        if not self.tokens.is_plain(address):
            reply = self.tokens.read(address)
            if reply is None or not self._may_be_ours(reply):
                return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _may_be_ours(self, reply: ReplyAddress) -> bool:
        """Whether a reply address was made for someone the bot mailed. Who
        is replying is only known at DATA (the From header); this refuses a
        made-up or altered address early."""
        if self.bot.store.thread(reply.thread_id) is None:
            return False
        events = self.bot.get(reply.thread_id).events
        if reply.seq >= len(events) or not isinstance(
            events[reply.seq], ToolCall | AssistantMessage | Error
        ):
            return False  # nothing the bot mails
        sent_to = [
            r
            for e in events
            if isinstance(e, Delivered) and e.channel == self.name and e.of_seq == reply.seq
            for r in e.refs.get("to", "").split()
        ]
        # Not recorded yet (sent just before a crash): DATA decides.
        return not sent_to or any(self.tokens.signed_for(reply, r) for r in sent_to)

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

    async def _receive(self, mail: InboundMail, rcpts: list[str]) -> str:
        if mail.auto:
            log.info(
                "dropped automatic mail %s from %s: %s", mail.message_id, mail.sender, mail.auto
            )
            return "250 2.0.0 Accepted (automatic mail: no reply)"
        if not mail.sender:
            return "550 5.1.7 The message has no sender address"
        servid = self.settings.auth_servid
        if servid and dmarc_failed(mail, servid):
            return f"550 5.7.1 {servid} found this mail fails DMARC for its From domain"
        key = route_key(mail.message_id)
        if self.bot.store.find_key(key) is not None:
            return "250 2.0.0 Already received"
        for address in rcpts:
            if (reply := self.tokens.read(address)) is not None:
                return await self._signed_reply(mail, reply, key)
        for message_id in (*mail.in_reply_to, *reversed(mail.references)):
            if (thread_id := self.bot.store.route(route_key(message_id))) is not None:
                return await self._thread_message(mail, thread_id, key)
        return await self._launch(mail, key)

    async def _launch(self, mail: InboundMail, key: str) -> str:
        # The From header, not the envelope sender: forwarders rewrite the latter.
        if not self.bot.people.sender_allowed(mail.sender):
            return f"550 5.7.1 {mail.sender} may not start conversations with this bot"
        if not mail.text:
            return "550 5.6.0 The message has no text"
        source = self._source(mail, "email:from")
        await self.bot.launch(mail.text, source=source, key=key, routes=[key])
        return "250 2.0.0 Accepted"

    async def _thread_message(self, mail: InboundMail, thread_id: str, key: str) -> str:
        """A mail found by its headers only: a message from one of the
        thread's people, never an answer or a decision."""
        events = self.bot.get(thread_id).events
        source = self._source(mail, "email:thread")
        if (why := is_participant(self.bot.people, events, source)) is not None:
            return f"550 5.7.1 {mail.sender} may not write in this conversation: {_one_line(why)}"
        if _replied_call(events, mail) is not None:
            return _USE_REPLY_TO
        if not mail.text:
            return "550 5.6.0 The message has no text"
        try:
            await self.bot.send(thread_id, mail.text, source=source, key=key)
        except Refused:
            return _USE_REPLY_TO  # the thread waits for an answer or a decision
        return "250 2.0.0 Accepted"

    async def _signed_reply(self, mail: InboundMail, reply: ReplyAddress, key: str) -> str:
        """A reply to the address made for one recipient and one event: the
        recipient's answer or decision on that call, or a message."""
        if not self.tokens.signed_for(reply, mail.sender):
            return (
                "550 5.7.1 This reply address was made for someone else: "
                f"{mail.sender} may not use it"
            )
        thread_id = reply.thread_id
        if self.bot.store.thread(thread_id) is None:
            return "550 5.1.1 No such conversation"
        events = self.bot.get(thread_id).events
        if reply.seq >= len(events):
            return "550 5.1.1 No such conversation"
        target = events[reply.seq]
        source = self._source(mail, "email:signed")
        try:
            if isinstance(target, ToolCall) and target.name == HUMAN_INPUT:
                options = [str(o) for o in target.arguments.get("options") or []]
                text, option = _answer(mail.text, options)
                await self.bot.respond(
                    thread_id, text, call_id=target.call_id, option=option, source=source, key=key
                )
            elif isinstance(target, ToolCall):
                decision = _decision(mail.text)
                if decision is None:
                    self.bot.check(thread_id, "approval", call_id=target.call_id, source=source)
                    reply_to = self.tokens.reply_address(thread_id, reply.seq, mail.sender)
                    await self.postman.explain_choices(
                        events, mail.sender, reply_to, mail.message_id, target.name
                    )
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
                why = is_participant(self.bot.people, events, source)
                if why is not None:
                    return f"550 5.7.1 {mail.sender} may not write here: {_one_line(why)}"
                if not mail.text:
                    return "550 5.6.0 The message has no text"
                await self.bot.send(thread_id, mail.text, source=source, key=key)
        except Refused as e:
            return f"550 5.7.1 {_one_line(str(e))}"
        return "250 2.0.0 Accepted"

    def _source(self, mail: InboundMail, auth: str) -> Source:
        return email_source(
            self.bot.people,
            mail.sender,
            auth=auth,
            name=mail.sender_name,
            message_id=mail.message_id,
            subject=mail.subject,
        )

    # -- outbound ---------------------------------------------------------------

    async def deliver(
        self, thread_id: str, events: Sequence[Event], seq: int, *, fresh: bool = True
    ) -> Delivery:
        return await self.postman.deliver(thread_id, events, seq)

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
        await self.postman.send(msg)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


def _replied_call(events: Sequence[Event], mail: InboundMail) -> ToolCall | None:
    """The question or approval request this mail replies to, if it replies
    to one the bot sent (an answer sent that way is refused, never taken as
    a new message)."""
    sent: dict[str, int] = {
        message_id: e.of_seq
        for e in events
        if isinstance(e, Delivered) and e.channel == "email"
        for message_id in sent_ids(e)
    }
    for message_id in (*mail.in_reply_to, *reversed(mail.references)):
        seq = sent.get(message_id)
        if seq is not None:
            event = events[seq]
            if isinstance(event, ToolCall):
                return event
            return None  # a reply to an answer: a new message
    return None


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
