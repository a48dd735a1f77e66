"""Email, end to end: `threadbot serve` with its real aiosmtpd server, mail sent
with `smtplib`, the bot's mail caught by a second local SMTP server, and the
real `openai` client talking to a local fake model."""

from __future__ import annotations

import itertools
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.email import ReplyTokens

from .fakes import FakeOpenAI, ServerProcess, ask, calls, free_port, text
from .mail_fake import CaptureRelay, reply_bytes, text_of
from .test_http import env_for

SECRET = "test-secret"
BOT = "bot@example.com"
ANN = "ann@example.com"
LEAD = "lead@example.com"
MAX_BYTES = 200_000
_n = itertools.count(1)


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def server(
    relay: CaptureRelay, model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("email")
    (d / "ledger.txt").touch()
    env = env_for(d / "threadbot.db", model, d / "ledger.txt")
    env.update(
        THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
        THREADBOT_EMAIL=BOT,
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
        THREADBOT_SECRET=SECRET,
        THREADBOT_SMTP_MAX_BYTES=str(MAX_BYTES),
        THREADBOT_EMAIL_APPROVERS=LEAD,
    )
    s = ServerProcess(env).start()
    s.smtp_port = int(env["THREADBOT_SMTP"].rsplit(":", 1)[1])  # type: ignore[attr-defined]
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _script_used(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def send(
    server: ServerProcess, raw: bytes | EmailMessage, *, to: str = BOT, sender: str = ANN
) -> None:
    data = raw.as_bytes() if isinstance(raw, EmailMessage) else raw
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:  # type: ignore[attr-defined]
        smtp.sendmail(sender, [to], data)


def new_mail(subject: str, body: str, *, sender: str = ANN, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Ann Example <{sender}>"
    msg["To"] = BOT
    msg["Subject"] = subject
    msg["Message-ID"] = f"<m{next(_n)}.{time.time_ns()}@client.example>"
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg


def threads(server: ServerProcess) -> list[dict[str, Any]]:
    return list(httpx.get(server.url + "/threads?limit=1000").json())


def thread(server: ServerProcess, thread_id: str, status: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body: dict[str, Any] = httpx.get(server.url + f"/threads/{thread_id}").json()
        if status is None or body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def replies_to(
    relay: CaptureRelay, message_id: str, count: int = 1, timeout: float = 20
) -> list[EmailMessage]:
    """The bot's mails in reply to `message_id`, once there are `count` (a
    slow run may still be delivering an earlier test's mail)."""
    deadline = time.monotonic() + timeout
    while True:
        with relay.lock:
            found = [c.message for c in relay.messages if c.message["In-Reply-To"] == message_id]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} replies to {message_id}"
        time.sleep(0.02)


def launch(
    server: ServerProcess, relay: CaptureRelay, subject: str, body: str
) -> tuple[str, EmailMessage, EmailMessage]:
    """Mail the bot; return the thread id, the mail sent and the bot's first mail."""
    mail = new_mail(subject, body)
    send(server, mail)
    bot_mail = replies_to(relay, str(mail["Message-ID"]))[0]
    thread_id = next(t["id"] for t in threads(server) if t["title"] == body.splitlines()[0])
    return thread_id, mail, bot_mail


STYLES = [
    "gmail",
    "outlook",
    "outlook_web",
    "apple",
    "thunderbird",
    "gmail_html",
    "outlook_html",
    "apple_html",
    "latin1",
]


@pytest.mark.parametrize("style", STYLES)
def test_question_reply_answer_in_every_client_style(
    style: str, server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    answer = "Version 1.4.2, déployez-la" if style == "latin1" else "Version 1.4.2 please"
    model.add(ask("Which version?"), text(f"Deploying **1.4.2** ({style})."))
    thread_id, first, question = launch(
        server, relay, f"deploy the api ({style})", f"deploy the api {style}"
    )
    # The question: threaded under the mail that started it, answerable by reply.
    assert question["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in question["References"]
    assert question["Subject"] == f"Re: deploy the api ({style})"
    assert question["To"] == ANN
    assert question["From"] == f"threadbot <{BOT}>"
    tokens = ReplyTokens(SECRET, BOT)
    assert question["Reply-To"] == f"threadbot <{tokens.reply_address(thread_id, 1, ANN)}>"
    assert question["Message-ID"] == tokens.message_id(thread_id, 1, ANN)
    assert question["Auto-Submitted"] == "auto-replied"
    assert "Which version?" in text_of(question)
    assert question.get_body(preferencelist=("html",)) is not None
    assert model.requests[-1]["messages"][-1]["content"] == f"deploy the api {style}"

    reply_to = question["Reply-To"].addresses[0].addr_spec
    reply_id = f"<r{next(_n)}@client.example>"
    send(
        server,
        reply_bytes(
            style, sender=ANN, to=reply_to, answer=answer, quoted=question, message_id=reply_id
        ),
        to=reply_to,
    )
    final = replies_to(relay, reply_id)[0]
    body = thread(server, thread_id, "done")
    response = next(e for e in body["events"] if e["type"] == "human_response")
    assert response["text"] == answer  # quotes, signatures and footers gone
    assert model.requests[-1]["messages"][-1]["content"] == answer
    # The answer is threaded under the reply, and the whole conversation.
    assert final["In-Reply-To"] == reply_id
    refs = final["References"].split()
    assert refs[0] == first["Message-ID"]
    assert question["Message-ID"] in refs and reply_id in refs
    assert f"Deploying *1.4.2* ({style})" in text_of(
        final
    ) or f"Deploying **1.4.2** ({style})" in text_of(final)


def approval_mail(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI, tag: str
) -> tuple[str, EmailMessage, EmailMessage]:
    """A thread waiting for LEAD's approval: its id, the request LEAD got and
    the notice ANN (who asked) got."""
    model.add(calls(("deploy", {"service": "api", "version": tag})))
    start = new_mail(f"deploy {tag}", f"deploy api {tag}")
    send(server, start)
    sent = replies_to(relay, str(start["Message-ID"]), 2)
    thread_id = next(t["id"] for t in threads(server) if t["title"] == f"deploy api {tag}")
    # Each gets a mail of their own, with a reply address of their own.
    assert sorted(str(m["To"]) for m in sent) == [ANN, LEAD]
    request = next(m for m in sent if m["To"] == LEAD)
    notice = next(m for m in sent if m["To"] == ANN)
    assert request["Reply-To"] != notice["Reply-To"]
    assert request["Message-ID"] != notice["Message-ID"]
    assert "Approval needed before I run deploy" in text_of(request)
    assert "version: " + tag in text_of(request)
    assert 'reply with "approve"' in text_of(request)
    assert "needs approval by lead@example.com" in text_of(notice)
    assert "approve" not in text_of(notice)
    thread(server, thread_id, "waiting_for_approval")
    return thread_id, request, notice


def reply(
    server: ServerProcess, request: EmailMessage, body: str, *, sender: str = ANN
) -> EmailMessage:
    address = request["Reply-To"].addresses[0].addr_spec
    msg = new_mail("Re: " + str(request["Subject"]), body, sender=sender)
    msg["In-Reply-To"] = request["Message-ID"]
    send(server, msg, to=address, sender=sender)
    return msg


def test_approve_by_mail(server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI) -> None:
    thread_id, request, _ = approval_mail(server, relay, model, "7.0")
    model.add(text("Deployed 7.0."))
    reply(server, request, "Yes\n\nOn Monday threadbot wrote:\n> Approval needed", sender=LEAD)
    body = thread(server, thread_id, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["source"]["user"]) == (True, LEAD)
    assert approval["source"]["auth"] == "email:signed"
    assert any(
        e["type"] == "tool_result" and e["output"] == "deployed api 7.0" for e in body["events"]
    )


def test_reject_by_mail_with_a_reason(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    thread_id, request, _ = approval_mail(server, relay, model, "8.0")
    model.add(text("Not deployed."))
    reply(server, request, "reject - the database migration has not run yet\n\nLee", sender=LEAD)
    body = thread(server, thread_id, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert approval["approved"] is False
    assert approval["comment"].startswith("the database migration has not run yet")
    assert "the database migration has not run yet" in model.requests[-1]["messages"][-1]["content"]


def test_a_reply_that_is_no_decision_responds_instead(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    thread_id, request, notice = approval_mail(server, relay, model, "9.0")
    n = len(thread(server, thread_id)["events"])
    # The person who asked is not an approver here: refused, nothing written.
    with pytest.raises(smtplib.SMTPDataError) as denied:
        reply(server, notice, "use the staging cluster first")
    assert denied.value.smtp_code == 550
    assert len(thread(server, thread_id)["events"]) == n
    model.add(text("I'll try staging first."))
    reply(server, request, "hmm, use the staging cluster first", sender=LEAD)
    events = thread(server, thread_id, "done")["events"]
    decision = next(e for e in events if e["type"] == "approval")
    assert decision["responded"] is True and decision["approved"] is False
    assert decision["source"]["auth"] == "email:signed"
    assert not [e for e in events if e["type"] in ("tool_started", "tool_result")]
    told = model.requests[-1]["messages"][-1]["content"]
    assert "use the staging cluster first" in told and "not run" in told


def test_options_by_number(server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI) -> None:
    model.add(ask("Where?", ["staging", "production"]), text("ok"))
    thread_id, _, question = launch(server, relay, "where", "deploy somewhere")
    assert "1. staging" in text_of(question) and "2. production" in text_of(question)
    reply(server, question, "2")
    response = next(
        e for e in thread(server, thread_id, "done")["events"] if e["type"] == "human_response"
    )
    assert (response["text"], response["option"]) == ("production", "production")


def test_forged_and_foreign_replies_are_refused(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"))
    thread_id, _, question = launch(server, relay, "forgery", "deploy forgery")
    n = len(thread(server, thread_id)["events"])
    good = question["Reply-To"].addresses[0].addr_spec
    local, domain = good.split("@")
    forged = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    _, seq, sig = local.split(".")
    other_thread = f"bot+{'f' * 16}.{seq}.{sig}@{domain}"
    other_call = f"bot+{thread_id}.0.{sig}@{domain}"
    old_style = f"bot+{thread_id}.{sig}@{domain}"  # the thread alone
    for address in (
        forged,
        other_thread,
        other_call,
        old_style,
        "someone@example.com",
        "bot+@example.com",
    ):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(server, new_mail("Re: x", "1.4.2"), to=address)
        assert refused.value.recipients[address][0] == 550
    # A real reply address, but from someone it was not sent to.
    with pytest.raises(smtplib.SMTPDataError) as denied:
        reply(server, question, "9.9.9", sender="eve@example.com")
    assert denied.value.smtp_code == 550
    assert b"5.7.1" in denied.value.smtp_error and b"may not" in denied.value.smtp_error
    assert len(thread(server, thread_id)["events"]) == n
    model.add(text("ok"))
    reply(server, question, "1.4.2")  # the real sender still can
    thread(server, thread_id, "done")


def test_auto_replies_and_bounces_are_dropped_silently(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"))
    thread_id, _, question = launch(server, relay, "ooo", "deploy while away")
    n = len(thread(server, thread_id)["events"])
    address = question["Reply-To"].addresses[0].addr_spec
    count = len(threads(server))
    before = len(relay.messages)
    ooo = new_mail("Out of office", "I am away until Monday.", Auto_Submitted="auto-replied")
    send(server, ooo, to=address)
    send(server, new_mail("Auto: away", "Away.", X_Autoreply="yes"), to=address)
    send(server, new_mail("Away", "Away.", Precedence="auto_reply"), to=BOT)
    bounce = (
        "From: Mail Delivery Subsystem <mailer-daemon@example.org>\r\n"
        f"To: {address}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce1@example.org>\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed permanently.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; example.org\r\n"
        "--B--\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port) as smtp:  # type: ignore[attr-defined]
        smtp.sendmail("", [address], bounce)  # the empty return path of a bounce
    time.sleep(0.5)
    assert len(thread(server, thread_id)["events"]) == n
    assert len(threads(server)) == count
    assert len(relay.messages) == before  # and nothing was sent back


def test_a_redelivered_mail_is_a_no_op(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"), text("ok"))
    count = len(threads(server))
    mail = new_mail("dup", "deploy dup")
    send(server, mail)
    send(server, mail)
    question = replies_to(relay, str(mail["Message-ID"]))[0]
    time.sleep(0.3)
    assert len(threads(server)) == count + 1
    thread_id = threads(server)[0]["id"]
    raw = reply(server, question, "1.0")
    send(server, raw, to=question["Reply-To"].addresses[0].addr_spec)
    body = thread(server, thread_id, "done")
    assert [e["type"] for e in body["events"]].count("human_response") == 1


def test_oversized_mail_is_refused(server: ServerProcess) -> None:
    count = len(threads(server))
    big = new_mail("big", "x" * (MAX_BYTES + 1000))
    with pytest.raises(smtplib.SMTPException) as refused:
        send(server, big)
    assert "552" in str(refused.value)
    assert len(threads(server)) == count


def test_broken_mime_does_not_crash_the_server(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    broken = [
        b"\xff\xfe\x00garbage with no headers at all\r\n",
        b"From: ann@example.com\r\n"
        b'Content-Type: multipart/mixed; boundary="x"\r\n'
        b"Message-ID: <broken1@x>\r\n\r\n"
        b"--x\r\nContent-Type: text/plain; charset=no-such-charset\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
        b"From: =?utf-8?q?broken=\r\nSubject: =?unknown?b?xx?=\r\n"
        b"Message-ID: <broken2@x>\r\n\r\nbody",
    ]
    count = len(threads(server))
    model.add(text("noted"))  # for a mail that is broken but still readable
    codes = []
    for raw in broken:
        try:
            send(server, raw)
            codes.append(250)
        except smtplib.SMTPResponseException as e:
            codes.append(e.smtp_code)  # a clear refusal, not a dropped connection
    # No sender: refused. A readable sender with unreadable parts: taken as far as it reads.
    assert codes == [550, 250, 550]
    deadline = time.monotonic() + 10
    while model.script:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(threads(server)) == count + 1
    model.add(text("still here"))
    launch(server, relay, "after", "after the garbage")


def test_a_new_mail_from_a_non_utf8_client(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(text("ok"))
    msg = EmailMessage()
    msg["From"] = f"Zoë <{ANN}>"
    msg["To"] = BOT
    msg["Subject"] = "Déploiement"
    msg["Message-ID"] = "<latin1@client.example>"
    msg.set_content("Déployez l'api, s'il vous plaît.", charset="iso-8859-1")
    assert b"iso-8859-1" in msg.as_bytes()
    send(server, msg)
    deadline = time.monotonic() + 10
    while not any(
        t["title"] == "Déployez l'api, s'il vous plaît." and t["status"] == "done"
        for t in threads(server)
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_reply_to_the_plain_address_is_routed_by_its_headers(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    """Some clients drop Reply-To; In-Reply-To/References still find the
    thread, but such a mail proves nothing about its sender: it may add a
    message, never answer."""
    model.add(ask("Which version?"), text("ok"))
    thread_id, _, question = launch(server, relay, "headers", "deploy by headers")
    count = len(threads(server))
    n = len(thread(server, thread_id, "waiting_for_human")["events"])
    msg = new_mail("Re: headers", "3.1")
    msg["In-Reply-To"] = question["Message-ID"]
    msg["References"] = question["References"] + " " + question["Message-ID"]
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(server, msg, to=BOT)
    assert refused.value.smtp_code == 550
    assert b"Reply-To" in refused.value.smtp_error
    assert len(thread(server, thread_id, "waiting_for_human")["events"]) == n
    answer = replies_to(relay, str(reply(server, question, "3.1")["Message-ID"]))[0]
    thread(server, thread_id, "done")
    # After the answer, a follow-up found by its headers is a message in the thread.
    model.add(text("noted"))
    follow = new_mail("Re: headers", "thanks, and tag it")
    follow["In-Reply-To"] = answer["Message-ID"]
    send(server, follow, to=BOT)
    replies_to(relay, str(follow["Message-ID"]))
    body = thread(server, thread_id, "done")
    message = [e for e in body["events"] if e["type"] == "user_message"][-1]
    assert message["text"] == "thanks, and tag it"
    assert (message["source"]["user"], message["source"]["auth"]) == (ANN, "email:thread")
    assert len(threads(server)) == count
    # Someone who is not in the thread cannot write in it that way.
    n = len(body["events"])
    stranger = new_mail("Re: headers", "me too", sender="eve@example.com")
    stranger["In-Reply-To"] = answer["Message-ID"]
    with pytest.raises(smtplib.SMTPDataError) as denied:
        send(server, stranger, to=BOT, sender="eve@example.com")
    assert denied.value.smtp_code == 550
    assert len(thread(server, thread_id)["events"]) == n


# The test relay takes AUTH without TLS (no certificate here); aiosmtpd warns.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_relay_login_is_used(tmp_path: Path) -> None:
    with (
        CaptureRelay(login=("bot-user", "relay-pass")).serve() as relay,
        FakeOpenAI().serve() as model,
    ):
        env = env_for(tmp_path / "threadbot.db", model, tmp_path / "ledger.txt")
        env.update(
            THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
            THREADBOT_EMAIL=BOT,
            THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
            THREADBOT_SMTP_USER="bot-user",
            THREADBOT_SMTP_PASSWORD="relay-pass",
        )
        s = ServerProcess(env).start()
        s.smtp_port = int(env["THREADBOT_SMTP"].rsplit(":", 1)[1])  # type: ignore[attr-defined]
        try:
            model.add(text("hello by mail"))
            send(s, new_mail("hi", "hello"))
            sent = relay.wait_for(1)[0]
            assert relay.logins == ["bot-user"]
            assert "hello by mail" in text_of(sent.message)
            assert sent.mail_from == BOT
        finally:
            s.stop()


def test_a_late_answer_is_told_who_answered(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"), text("Deployed 5."))
    thread_id, _, question = launch(server, relay, "late", "deploy late")
    call_id = thread(server, thread_id, "waiting_for_human")["pending"]["call_id"]
    r = httpx.post(
        server.url + f"/threads/{thread_id}/responses",
        json={"text": "5", "call_id": call_id, "user": "ops-console"},
    )
    assert r.status_code == 202
    deadline = time.monotonic() + 20
    while (body := thread(server, thread_id, "done"))["events"][-1]["type"] != "delivered":
        assert time.monotonic() < deadline, body  # the answer is mailed, then recorded
        time.sleep(0.02)
    n = len(body["events"])
    with pytest.raises(smtplib.SMTPDataError) as late:
        reply(server, question, "6")
    assert late.value.smtp_code == 550
    assert b"already settled" in late.value.smtp_error
    assert b"ops-console" in late.value.smtp_error
    assert len(thread(server, thread_id)["events"]) == n  # not taken as a new message


def _refused(server: ServerProcess, msg: EmailMessage, to: str, sender: str) -> tuple[int, bytes]:
    """The code and text of a refusal, at RCPT or at DATA."""
    try:
        send(server, msg, to=to, sender=sender)
    except smtplib.SMTPRecipientsRefused as e:
        return e.recipients[to]
    except smtplib.SMTPDataError as e:
        return e.smtp_code, e.smtp_error
    raise AssertionError(f"accepted: mail from {sender} to {to}")


def _still_waiting(server: ServerProcess, thread_id: str, n: int) -> None:
    time.sleep(0.3)  # time for a wrongly accepted approval to run the tool
    body = thread(server, thread_id, "waiting_for_approval")
    assert len(body["events"]) == n
    assert not any(e["type"] in ("approval", "tool_result") for e in body["events"])


def test_a_forged_from_on_a_reply_to_the_plain_address_does_not_approve(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    """Anyone who saw the request's Message-ID could once approve as the
    approver by mailing the plain address with In-Reply-To and a forged From."""
    thread_id, request, _ = approval_mail(server, relay, model, "10.0")
    n = len(thread(server, thread_id)["events"])
    forged = new_mail("Re: deploy", "approve", sender=LEAD)
    forged["In-Reply-To"] = request["Message-ID"]
    forged["References"] = request["Message-ID"]
    code, why = _refused(server, forged, BOT, LEAD)
    assert code == 550 and b"Reply-To" in why
    _still_waiting(server, thread_id, n)
    model.add(text("Deployed."))
    reply(server, request, "approve", sender=LEAD)  # the approver's own address still works
    thread(server, thread_id, "done")


def test_the_requester_cannot_approve_through_their_own_address_as_the_approver(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    thread_id, _, notice = approval_mail(server, relay, model, "11.0")
    n = len(thread(server, thread_id)["events"])
    with pytest.raises(smtplib.SMTPDataError) as denied:
        reply(server, notice, "approve", sender=LEAD)  # ANN's address, LEAD's From
    assert denied.value.smtp_code == 550
    assert b"5.7.1" in denied.value.smtp_error
    assert b"made for someone else" in denied.value.smtp_error
    _still_waiting(server, thread_id, n)
    model.add(text("Not deployed."))
    reply(server, thread_request(relay, notice), "no", sender=LEAD)
    thread(server, thread_id, "done")


def thread_request(relay: CaptureRelay, notice: EmailMessage) -> EmailMessage:
    """The request LEAD got for the call `notice` told ANN about."""
    with relay.lock:
        return next(
            c.message
            for c in relay.messages
            if c.rcpt_tos == [LEAD] and c.message["In-Reply-To"] == notice["In-Reply-To"]
        )


def test_a_reply_to_the_approvers_address_from_someone_else_is_refused(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    thread_id, request, _ = approval_mail(server, relay, model, "12.0")
    n = len(thread(server, thread_id)["events"])
    for sender in (ANN, "eve@example.com"):
        with pytest.raises(smtplib.SMTPDataError) as denied:
            reply(server, request, "approve", sender=sender)
        assert denied.value.smtp_code == 550
        assert b"made for someone else" in denied.value.smtp_error
    _still_waiting(server, thread_id, n)
    model.add(text("ok"))
    reply(server, request, "approve", sender=LEAD)
    thread(server, thread_id, "done")


def test_a_line_break_in_the_subject_does_not_stop_the_threads_mail(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"), text("ok"))
    raw = (
        f"From: Ann <{ANN}>\r\nTo: {BOT}\r\n"
        "Subject: =?utf-8?q?deploy=0D=0ABcc=3A_eve=40example.com?=\r\n"
        "Message-ID: <crlf-subject@client.example>\r\n\r\ndeploy with a broken subject\r\n"
    ).encode()
    send(server, raw)
    question = replies_to(relay, "<crlf-subject@client.example>")[0]
    assert question["Subject"] == "Re: deploy Bcc: eve@example.com"
    assert question["Bcc"] is None
    answer = reply(server, question, "1.0")
    replies_to(relay, str(answer["Message-ID"]))  # the thread's next mail went out too
    thread_id = next(t["id"] for t in threads(server) if t["title"].startswith("deploy with a"))
    thread(server, thread_id, "done")


@pytest.mark.parametrize(
    "address", ["zoë@example.com", "bot+abc.1.ü@example.com", "böt@example.com"]
)
def test_a_non_ascii_recipient_is_refused_cleanly(server: ServerProcess, address: str) -> None:
    port = server.smtp_port  # type: ignore[attr-defined]
    with (
        smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        smtp.sendmail(ANN, [address], b"Subject: x\r\n\r\nx", mail_options=["SMTPUTF8"])
    code, why = refused.value.recipients[address]
    assert code == 550, why
