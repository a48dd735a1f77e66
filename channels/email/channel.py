"""The email channel: an SMTP server in, an SMTP relay out.

Inbound, a mail to the bot's address starts a thread (from the senders
THREADBOT_EMAIL_SENDERS allows). Answers, decisions, responses and
cancellations come only to the signed reply address a mail was sent with,
from the person it was sent to (see `tokens`): the core reads the text
against what that mail delivered, and a reply whose first line is "cancel"
(or "cancel: reason") cancels the thread. A mail found only by its In-Reply-To/References adds a
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
from collections.abc import Mapping
from email.message import EmailMessage

from aiosmtpd.smtp import SMTP, Envelope, Session

from bot import (
    ApprovalRequest,
    Delivery,
    FollowUp,
    Notice,
    NotWaiting,
    Person,
    Question,
    Refused,
    Source,
    ThreadBot,
    UsageError,
)

from .outbound import Postman, route_key, sent_ids
from .parse import InboundMail, dmarc_failed, parse_mail
from .recipients import email_source
from .settings import EmailSettings, hostport
from .tokens import ReplyAddress, ReplyTokens

__all__ = ["EmailChannel"]

log = logging.getLogger("threadbot.email")

_USE_REPLY_TO = (
    "550 5.7.1 Answers, decisions and cancellations are taken only as a reply to "
    "the address the bot's mail came from (its Reply-To); nothing was recorded"
)


class EmailChannel:
    name = "email"

    def __init__(self, bot: ThreadBot, settings: EmailSettings) -> None:
        self.bot = bot
        self.settings = settings
        self.tokens = ReplyTokens(settings.secret or bot.secret("email"), settings.address)
        self.postman = Postman(bot.people, settings, self.tokens)
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

    async def ready(self) -> str | None:
        """None while the SMTP server listens."""
        if self._server is None or not self._server.is_serving():
            return "the SMTP server is not listening"
        return None

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
        if not self.bot.exists(reply.thread_id):
            return False
        notice = self.bot.notice(reply.thread_id, reply.seq, self.name)
        if notice is None:
            return False  # nothing the bot mails
        sent_to = [r for refs in notice.deliveries for r in refs.get("to", "").split()]
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
        if self.bot.received(key):
            return "250 2.0.0 Already received"
        for address in rcpts:
            if (reply := self.tokens.read(address)) is not None:
                return await self._signed_reply(mail, reply, key)
        for message_id in (*mail.in_reply_to, *reversed(mail.references)):
            if (thread_id := self.bot.routed(route_key(message_id))) is not None:
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
        source = self._source(mail, "email:thread")
        if isinstance(self._replied_post(thread_id, mail), Question | ApprovalRequest | FollowUp):
            return _USE_REPLY_TO
        if not mail.text:
            return "550 5.6.0 The message has no text"
        if _cancelling(mail.text) is not None:
            return _USE_REPLY_TO
        try:
            await self.bot.send(thread_id, mail.text, source=source, key=key)
        except NotWaiting:
            return _USE_REPLY_TO  # the thread waits for an answer or a decision
        except Refused as e:
            return f"550 5.7.1 {_one_line(str(e))}"
        return "250 2.0.0 Accepted"

    def _replied_post(self, thread_id: str, mail: InboundMail) -> Notice | None:
        """What the bot mailed that this mail replies to, by its headers."""
        for message_id in (*mail.in_reply_to, *reversed(mail.references)):

            def sent_as(refs: Mapping[str, str], m: str = message_id) -> bool:
                return m in sent_ids(refs)

            if (found := self.bot.find_post(thread_id, self.name, sent_as)) is not None:
                return found
        return None

    async def _signed_reply(self, mail: InboundMail, reply: ReplyAddress, key: str) -> str:
        """A reply to the address made for one recipient and one event: the
        recipient's answer or decision on that call, or a message."""
        if not self.tokens.signed_for(reply, mail.sender):
            return (
                "550 5.7.1 This reply address was made for someone else: "
                f"{mail.sender} may not use it"
            )
        thread_id = reply.thread_id
        if not self.bot.exists(thread_id):
            return "550 5.1.1 No such conversation"
        if not mail.text:
            return "550 5.6.0 The message has no text"
        source = self._source(mail, "email:signed")
        reason = _cancelling(mail.text)
        if reason is not None and not self._cancel_is_an_option(thread_id, reply.seq):
            try:
                await self.bot.cancel(thread_id, reason or None, source=source, key=key)
            except Refused as e:
                return f"550 5.7.1 {_one_line(str(e))}"
            return "250 2.0.0 Accepted (the conversation is cancelled)"
        try:
            await self.bot.reply(thread_id, mail.text, source=source, key=key, to=reply.seq)
        except (Refused, UsageError) as e:
            return f"550 5.7.1 {_one_line(str(e))}"
        return "250 2.0.0 Accepted"

    def _cancel_is_an_option(self, thread_id: str, seq: int) -> bool:
        """Whether "cancel" answers the question replied to (one of its options)."""
        notice = self.bot.notice(thread_id, seq, self.name)
        request = notice.request if isinstance(notice, FollowUp) else notice
        return isinstance(request, Question) and any(
            o.strip().lower() == "cancel" for o in request.options
        )

    def _source(self, mail: InboundMail, auth: str) -> Source:
        return email_source(
            self.bot.people,
            mail.sender,
            auth=auth,
            message_id=mail.message_id,
            subject=mail.subject,
        )

    # -- outbound ---------------------------------------------------------------

    def reaches(self, person: Person) -> bool:
        return self.postman.reaches(person)

    async def deliver(self, notice: Notice) -> Delivery:
        return await self.postman.deliver(notice)

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


_CANCEL = re.compile(r"^cancel(?:\s*[:\-\u2013\u2014]\s*(.*)|\s*[.!]?)$", re.IGNORECASE)


def _cancelling(text: str) -> str | None:
    """The reason ("" for none), when a reply's first line is "cancel" alone
    or "cancel: reason" (the reason may follow on the next lines). An answer
    that only starts with the word ("Cancel the deploy, use staging") is an
    answer."""
    first, _, rest = text.strip().partition("\n")
    found = _CANCEL.match(first.strip())
    if found is None:
        return None
    return f"{found.group(1) or ''}\n{rest}".strip()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
