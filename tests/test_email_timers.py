"""Email and #15: reminders, escalation and deadlines by mail; an approval
mailed for a thread that started elsewhere; respond and cancel by reply.
`threadbot serve` with its real aiosmtpd server, mail sent with `smtplib`,
the bot's mail caught by a local relay, the real `openai` client against the
fake model, and a real SQLite file. Timers are a second or two."""

from __future__ import annotations

import smtplib
import time
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from channels.email import ReplyTokens

from .fakes import REPO, FakeOpenAI, ServerProcess, ask, calls, free_port, text
from .mail_fake import CaptureRelay, text_of
from .test_email import new_mail, send
from .test_http import env_for

SECRET = "timer-secret"
BOT = "bot@example.com"
ANN = "ann@example.com"  # in the people file: Ann, by mail only
CAROL = "carol@example.com"  # in the people file: Carol, by mail only
LEAD = "lead@example.com"
BOB = "bob@example.com"
ONCALL = "oncall@example.com"
EVE = "eve@example.net"
TOKENS = ReplyTokens(SECRET, BOT)
ADMIN = {"Authorization": "Bearer timer-admin-token"}


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def server(relay: CaptureRelay, model: FakeOpenAI, workdir: Any) -> Iterator[ServerProcess]:
    people = workdir / "people.toml"
    people.write_text(
        f'[people.ann]\nname = "Ann"\nemail = "{ANN}"\n\n'
        f'[people.carol]\nname = "Carol"\nemail = "{CAROL}"\n'
    )
    env = env_for(workdir / "threadbot.db", model, workdir / "ledger.txt")
    env.update(
        THREADBOT_TOOLS=str(REPO / "tests" / "timed_tools.py"),
        THREADBOT_PEOPLE=str(people),
        THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
        THREADBOT_EMAIL=BOT,
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
        THREADBOT_SECRET=SECRET,
        THREADBOT_API_TOKEN=ADMIN["Authorization"].split()[1],
        THREADBOT_QUESTION_REMIND_AFTER="1",
    )
    s = ServerProcess(env).start()
    s.smtp_port = int(env["THREADBOT_SMTP"].rsplit(":", 1)[1])  # type: ignore[attr-defined]
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _script_used(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def mails_of(relay: CaptureRelay, thread_id: str) -> list[EmailMessage]:
    """Every mail the bot sent for the thread (its Message-IDs name it)."""
    with relay.lock:
        return [c.message for c in relay.messages if f"<tb.{thread_id}." in c.message["Message-ID"]]


def wait_mail(
    relay: CaptureRelay, thread_id: str, to: str, says: str, timeout: float = 15
) -> EmailMessage:
    """The bot's mail of the thread to `to` whose text has `says`, once it came."""
    deadline = time.monotonic() + timeout
    while True:
        for m in mails_of(relay, thread_id):
            if m["To"] == to and says in text_of(m):
                return m
        assert time.monotonic() < deadline, [
            (m["To"], text_of(m)) for m in mails_of(relay, thread_id)
        ]
        time.sleep(0.02)


def threads(server: ServerProcess) -> list[dict[str, Any]]:
    return list(httpx.get(server.url + "/threads?limit=1000", headers=ADMIN).json())


def thread(server: ServerProcess, thread_id: str, status: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body: dict[str, Any] = httpx.get(server.url + f"/threads/{thread_id}", headers=ADMIN).json()
        if status is None or body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def start(server: ServerProcess, relay: CaptureRelay, body: str) -> tuple[str, EmailMessage]:
    """Ann mails the bot; the thread's id and her mail, once the thread waits."""
    mail = new_mail(body, body)
    send(server, mail)
    deadline = time.monotonic() + 15
    while not (found := [t["id"] for t in threads(server) if t["title"] == body]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return found[0], mail


def events(
    server: ServerProcess, thread_id: str, status: str | None = None
) -> list[dict[str, Any]]:
    return list(thread(server, thread_id, status)["events"])


def seq_of(evs: list[dict[str, Any]], kind: str) -> int:
    return next(e["seq"] for e in evs if e["type"] == kind)


def refused(server: ServerProcess, msg: EmailMessage, to: str, sender: str) -> bytes:
    """A 550 at DATA: its text."""
    with pytest.raises(smtplib.SMTPDataError) as denied:
        send(server, msg, to=to, sender=sender)
    assert denied.value.smtp_code == 550, denied.value
    return denied.value.smtp_error


def reply_mail(to_mail: EmailMessage, body: str, sender: str) -> EmailMessage:
    msg = new_mail("Re: " + str(to_mail["Subject"]), body, sender=sender)
    msg.replace_header("From", sender)
    msg["In-Reply-To"] = to_mail["Message-ID"]
    return msg


def reply(server: ServerProcess, to_mail: EmailMessage, body: str, *, sender: str) -> None:
    """`sender` replies to the bot's mail, at its Reply-To."""
    send(
        server,
        reply_mail(to_mail, body, sender),
        to=to_mail["Reply-To"].addresses[0].addr_spec,
        sender=sender,
    )


def reply_refused(server: ServerProcess, to_mail: EmailMessage, body: str, sender: str) -> bytes:
    address = to_mail["Reply-To"].addresses[0].addr_spec
    return refused(server, reply_mail(to_mail, body, sender), address, sender)


def ran(evs: list[dict[str, Any]]) -> list[str]:
    return [str(e["output"]) for e in evs if e["type"] == "tool_result"]


def no_mail_twice(relay: CaptureRelay, thread_id: str, evs: list[dict[str, Any]]) -> None:
    ids = Counter(str(m["Message-ID"]) for m in mails_of(relay, thread_id))
    assert all(n == 1 for n in ids.values()), ids
    delivered = Counter((e["of_seq"], e["channel"]) for e in evs if e["type"] == "delivered")
    assert all(n == 1 for n in delivered.values()), delivered
    assert not [e for e in evs if e["type"] == "delivered" and "failed" in e["refs"]]


def test_a_reminder_and_an_escalation_by_mail(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("restart", {"service": "db"})))
    thread_id, first = start(server, relay, "restart the db")
    request = wait_mail(relay, thread_id, LEAD, "Approval needed before I run restart")
    # A second later, the approver is reminded in the same conversation.
    reminder = wait_mail(relay, thread_id, LEAD, "Reminder: restart is still waiting")
    evs = events(server, thread_id)
    reminded = seq_of(evs, "reminder")
    assert reminder["Message-ID"] == TOKENS.message_id(thread_id, reminded, LEAD)
    assert reminder["Reply-To"].addresses[0].addr_spec == TOKENS.reply_address(
        thread_id, reminded, LEAD
    )
    assert reminder["In-Reply-To"] == first["Message-ID"]
    assert request["Message-ID"] in reminder["References"].split()
    assert reminder["Subject"] == request["Subject"] == "Re: restart the db"
    # Then on-call, known only by an address, gets the whole request.
    escalated = wait_mail(relay, thread_id, ONCALL, "Approval needed before I run restart")
    assert "Nobody has decided this in time" in text_of(escalated)
    assert 'reply with "approve"' in text_of(escalated)
    note = wait_mail(relay, thread_id, ANN, f"I have asked {ONCALL} as well")
    evs = events(server, thread_id)
    up = seq_of(evs, "escalated")
    assert escalated["Reply-To"].addresses[0].addr_spec == TOKENS.reply_address(
        thread_id, up, ONCALL
    )
    assert note["In-Reply-To"] == first["Message-ID"]
    # On-call approves by replying to the escalation.
    model.add(text("Restarted the db."))
    reply(server, escalated, "approve", sender=ONCALL)
    evs = events(server, thread_id, "done")
    approval = next(e for e in evs if e["type"] == "approval")
    assert (approval["approved"], approval["source"]["user"]) == (True, ONCALL)
    assert approval["source"]["auth"] == "email:signed"
    assert ran(evs) == ["restarted db"]
    wait_mail(relay, thread_id, ANN, "Restarted the db.")
    no_mail_twice(relay, thread_id, events(server, thread_id))
    assert Counter(str(m["To"]) for m in mails_of(relay, thread_id)) == {
        LEAD: 2,  # the request and its reminder
        ANN: 3,  # what she asked waits, on-call was asked too, the answer
        ONCALL: 1,
    }


def test_a_thread_started_over_http_is_approved_by_mail(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("scale", {"service": "api", "replicas": 3})))
    created = httpx.post(
        server.url + "/threads", json={"text": "scale the api", "user": "ann"}, headers=ADMIN
    )
    assert created.status_code == 201
    thread_id = created.json()["id"]
    # Carol has no channel but mail: the request reaches her there.
    request = wait_mail(relay, thread_id, CAROL, "Approval needed before I run scale")
    assert text_of(request).startswith("Ann asked me for this over HTTP.")
    assert request["Subject"] == "Approval needed: scale"
    assert request["In-Reply-To"] is None
    assert request["Message-ID"] == TOKENS.message_id(thread_id, 1, CAROL)
    assert request["Reply-To"].addresses[0].addr_spec == TOKENS.reply_address(thread_id, 1, CAROL)
    # Nobody else decides or responds through her address.
    n = len(events(server, thread_id, "waiting_for_approval"))
    for body in ("approve", "scale it to 5 instead"):
        assert b"made for someone else" in reply_refused(server, request, body, ANN)
    assert len(events(server, thread_id, "waiting_for_approval")) == n
    model.add(text("Scaled the api to 3."))
    reply(server, request, "yes", sender=CAROL)
    evs = events(server, thread_id, "done")
    assert ran(evs) == ["scaled api to 3"]
    approval = next(e for e in evs if e["type"] == "approval")
    assert (approval["source"]["person"], approval["source"]["auth"]) == ("carol", "email:signed")
    # The outcome is recorded on the mail channel with no mail (nor failure).
    outcome = next(e for e in evs if e["type"] == "delivered" and e["of_seq"] == approval["seq"])
    assert outcome["channel"] == "email" and outcome["refs"] == {}
    no_mail_twice(relay, thread_id, evs)
    assert len(mails_of(relay, thread_id)) == 1


def test_a_reply_to_a_reminder_that_is_no_decision_responds(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("rotate_keys", {"service": "api"})))
    thread_id, _ = start(server, relay, "rotate the api keys")
    told = wait_mail(relay, thread_id, ANN, "needs approval by lead@example.com")
    reminder = wait_mail(relay, thread_id, LEAD, "Reminder: rotate_keys is still waiting")
    n = len(events(server, thread_id, "waiting_for_approval"))
    # Neither the person who asked nor someone else responds for the approver.
    assert b"may not" in reply_refused(server, told, "rotate after the release", ANN)
    assert b"made for someone else" in reply_refused(
        server, reminder, "rotate after the release", EVE
    )
    assert len(events(server, thread_id, "waiting_for_approval")) == n
    model.add(text("I'll rotate them after the release."))
    reply(server, reminder, "Not now: rotate after the release.", sender=LEAD)
    evs = events(server, thread_id, "done")
    decision = next(e for e in evs if e["type"] == "approval")
    assert decision["responded"] is True and decision["approved"] is False
    assert decision["source"]["user"] == LEAD
    assert ran(evs) == []
    said = model.requests[-1]["messages"][-1]["content"]
    assert "rotate after the release" in said and "not run" in said


def test_cancel_by_mail(server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI) -> None:
    model.add(calls(("deploy", {"service": "web"})))
    thread_id, first = start(server, relay, "deploy the web app")
    request = wait_mail(relay, thread_id, LEAD, "Approval needed before I run deploy")
    told = wait_mail(relay, thread_id, ANN, "needs approval by lead@example.com")
    assert "cancel: " in text_of(request) and "cancel: " in text_of(told)
    n = len(events(server, thread_id, "waiting_for_approval"))
    # Someone else cannot cancel: not with another's reply address, nor by headers.
    assert b"made for someone else" in reply_refused(server, request, "cancel mine now", EVE)
    by_headers = new_mail("Re: deploy", "cancel", sender=ANN)
    by_headers["In-Reply-To"] = request["Message-ID"]
    assert b"Reply-To" in refused(server, by_headers, BOT, ANN)
    assert len(events(server, thread_id, "waiting_for_approval")) == n
    # The person who asked cancels it by replying.
    reply(server, told, "Cancel: wrong service, I meant the api", sender=ANN)
    evs = events(server, thread_id, "cancelled")
    cancelled = next(e for e in evs if e["type"] == "cancelled")
    assert cancelled["reason"] == "wrong service, I meant the api"
    assert (cancelled["source"]["user"], cancelled["source"]["auth"]) == (ANN, "email:signed")
    mailed = wait_mail(relay, thread_id, ANN, "Cancelled by Ann: wrong service")
    assert mailed["In-Reply-To"] == first["Message-ID"]
    assert ran(evs) == []
    # Too late for the approver, and nothing left to cancel.
    assert b"already settled" in reply_refused(server, request, "approve", LEAD)
    assert b"nothing to cancel" in reply_refused(server, mailed, "cancel", ANN)
    assert len(events(server, thread_id)) == len(events(server, thread_id, "cancelled"))
    no_mail_twice(relay, thread_id, events(server, thread_id))

    # The approver may cancel too; the person who asked is told.
    model.add(calls(("deploy", {"service": "docs"})))
    thread_id, _ = start(server, relay, "deploy the docs")
    request = wait_mail(relay, thread_id, LEAD, "Approval needed before I run deploy")
    reply(server, request, "cancel", sender=LEAD)
    events(server, thread_id, "cancelled")
    wait_mail(relay, thread_id, ANN, f"Cancelled by {LEAD}.")


def test_a_deadline_rejects_a_mailed_approval_and_a_late_reply_is_told(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("migrate", {"db": "main"})), text("Nobody approved the migration in time."))
    thread_id, _ = start(server, relay, "migrate the main db")
    request = wait_mail(relay, thread_id, LEAD, "Approval needed before I run migrate")
    assert "if nobody does, it is rejected." in text_of(request)
    assert "Decide by 20" in text_of(request) and " UTC;" in text_of(request)
    told = wait_mail(relay, thread_id, ANN, "It can be decided until")
    assert "approve" not in text_of(told)
    evs = events(server, thread_id, "done")
    decision = next(e for e in evs if e["type"] == "approval")
    assert decision["approved"] is False and decision["source"]["auth"] == "deadline"
    said = model.requests[-1]["messages"][-1]
    assert said["role"] == "tool" and "deadline" in said["content"]
    assert ran(evs) == []
    wait_mail(relay, thread_id, ANN, "Nobody approved the migration in time.")
    n = len(events(server, thread_id))
    late = reply_refused(server, request, "approve", LEAD)
    assert b"already settled" in late and b"the deadline" in late
    assert len(events(server, thread_id)) == n


def test_two_approvals_by_mail_and_the_reminder_says_who_approved(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("drop_table", {"name": "sessions"})))
    thread_id, _ = start(server, relay, "drop the sessions table")
    lead = wait_mail(relay, thread_id, LEAD, "Approval needed before I run drop_table")
    bob = wait_mail(relay, thread_id, BOB, "Approval needed before I run drop_table")
    assert "It needs 2 approvals (so far: nobody yet)." in text_of(lead)
    reply(server, lead, "approve", sender=LEAD)
    # Only Bob, who has not approved, is reminded; his reminder says who did.
    reminder = wait_mail(relay, thread_id, BOB, "Reminder: drop_table is still waiting")
    assert f"It needs 2 approvals (so far: {LEAD})." in text_of(reminder)
    assert not [
        m for m in mails_of(relay, thread_id) if m["To"] == LEAD and "Reminder" in text_of(m)
    ]
    model.add(text("Dropped the sessions table."))
    reply(server, bob, "approve", sender=BOB)
    evs = events(server, thread_id, "done")
    assert ran(evs) == ["dropped sessions"]
    assert [e["source"]["user"] for e in evs if e["type"] == "approval"] == [LEAD, BOB]


def test_a_question_reminder_by_mail_is_answered_by_replying_to_it(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(ask("Which region?", ["eu", "us"]))
    thread_id, first = start(server, relay, "open a bucket")
    question = wait_mail(relay, thread_id, ANN, "Which region?")
    reminder = wait_mail(relay, thread_id, ANN, "Reminder: I am still waiting for your answer.")
    assert "2. us" in text_of(reminder)
    assert reminder["In-Reply-To"] == first["Message-ID"]
    assert question["Message-ID"] in reminder["References"].split()
    model.add(text("Opened a bucket in us."))
    reply(server, reminder, "2", sender=ANN)
    evs = events(server, thread_id, "done")
    answer = next(e for e in evs if e["type"] == "human_response")
    assert (answer["text"], answer["source"]["auth"]) == ("us", "email:signed")
    wait_mail(relay, thread_id, ANN, "Opened a bucket in us.")
    no_mail_twice(relay, thread_id, events(server, thread_id))


def test_an_answer_that_starts_with_cancel_is_an_answer(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    """Only a first line of "cancel" alone (or "cancel: reason") cancels."""
    model.add(ask("What should I do with the deploy?"))
    thread_id, _ = start(server, relay, "the deploy looks stuck")
    question = wait_mail(relay, thread_id, ANN, "What should I do with the deploy?")
    model.add(text("Cancelled the deploy; staging next."))
    reply(server, question, "Cancel the deploy, use staging", sender=ANN)
    evs = events(server, thread_id, "done")
    answer = next(e for e in evs if e["type"] == "human_response")
    assert answer["text"] == "Cancel the deploy, use staging"
    assert not [e for e in evs if e["type"] == "cancelled"]
