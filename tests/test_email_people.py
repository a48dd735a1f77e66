"""Email with people configured differently: who may start threads, who
decides when nobody is named, a mail server's DMARC verdict, the warning at
start-up, and a mail resent after a crash. Each test runs its own
`threadbot serve`."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, calls, free_port, text
from .mail_fake import CaptureRelay, text_of
from .test_http import env_for

BOT = "bot@example.com"
BOSS = "boss@example.com"
EVE = "eve@example.net"
ADMIN_TOKEN = "admin-token-for-reading"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
_n = iter(range(1, 10**6))


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[ServerProcess, CaptureRelay, FakeOpenAI]]:
    with CaptureRelay().serve() as relay, FakeOpenAI().serve() as model:
        e = env_for(tmp_path / "threadbot.db", model, tmp_path / "ledger.txt")
        e.update(
            THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
            THREADBOT_EMAIL=BOT,
            THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
            THREADBOT_SECRET="people-secret",
            THREADBOT_API_TOKEN=ADMIN_TOKEN,
        )
        e.update(env)
        (tmp_path / "ledger.txt").touch()
        s = ServerProcess(e).start()
        s.smtp_port = int(e["THREADBOT_SMTP"].rsplit(":", 1)[1])  # type: ignore[attr-defined]
        try:
            yield s, relay, model
        finally:
            s.stop()


def mail(sender: str, body: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, BOT, body
    msg["Message-ID"] = f"<p{next(_n)}.{time.time_ns()}@client.example>"
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body)
    return msg


def send(server: ServerProcess, msg: EmailMessage, to: str = BOT) -> None:
    port = server.smtp_port  # type: ignore[attr-defined]
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(str(msg["From"]), [to], msg.as_bytes())


def reply(server: ServerProcess, to_mail: EmailMessage, sender: str, body: str, **h: str) -> None:
    msg = mail(sender, body, In_Reply_To=str(to_mail["Message-ID"]), **h)
    send(server, msg, to=to_mail["Reply-To"].addresses[0].addr_spec)


def wait_thread(server: ServerProcess, status: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        rows = httpx.get(server.url + "/threads", headers=ADMIN).json()
        if rows:
            body: dict[str, Any] = httpx.get(
                server.url + f"/threads/{rows[0]['id']}", headers=ADMIN
            ).json()
            if status is None or body["status"] == status:
                return body
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)


def test_a_stranger_cannot_approve_their_own_request_the_admins_do(tmp_path: Path) -> None:
    people = tmp_path / "people.toml"
    people.write_text(f'[people.boss]\nemail = "{BOSS}"\ngroups = ["admins"]\n')
    with serving(tmp_path, THREADBOT_PEOPLE=str(people)) as (server, relay, model):
        model.add(calls(("deploy", {"service": "api", "version": "6.6"})))
        send(server, mail(EVE, "deploy the api"))
        sent = relay.wait_for(2)
        by_rcpt = {c.rcpt_tos[0]: c.message for c in sent}
        assert set(by_rcpt) == {BOSS, EVE}  # the request went to the admins
        assert 'reply with "approve"' in text_of(by_rcpt[BOSS])
        assert "needs approval by an admin" in text_of(by_rcpt[EVE])
        body = wait_thread(server, "waiting_for_approval")
        n = len(body["events"])
        start = body["events"][0]["source"]
        assert (start["user"], start["auth"], start.get("person")) == (EVE, "email:from", None)
        with pytest.raises(smtplib.SMTPDataError) as denied:
            reply(server, by_rcpt[EVE], EVE, "approve")
        assert denied.value.smtp_code == 550 and b"admin" in denied.value.smtp_error
        time.sleep(0.3)
        body = wait_thread(server, "waiting_for_approval")
        assert len(body["events"]) == n
        assert (tmp_path / "ledger.txt").read_text() == ""
        model.add(text("Deployed."))
        reply(server, by_rcpt[BOSS], BOSS, "approve")
        body = wait_thread(server, "done")
        approval = next(e for e in body["events"] if e["type"] == "approval")
        assert approval["source"]["person"] == "boss"
        assert approval["source"]["auth"] == "email:signed"
        assert "deploy api 6.6" in (tmp_path / "ledger.txt").read_text()


def test_a_listed_sender_starts_threads_and_approves_their_own_others_are_refused(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, THREADBOT_EMAIL_SENDERS="ann@example.com, @ops.example.org") as (
        server,
        relay,
        model,
    ):
        for sender in (EVE, "ann@example.com.evil.net"):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                send(server, mail(sender, "deploy"))
            assert refused.value.smtp_code == 550
            assert b"may not start" in refused.value.smtp_error
        assert httpx.get(server.url + "/threads", headers=ADMIN).json() == []
        model.add(calls(("deploy", {"service": "api", "version": "1"})), text("Deployed."))
        send(server, mail("Ann <ann@example.com>", "deploy the api"))
        request = relay.wait_for(1)[0].message
        wait_thread(server, "waiting_for_approval")
        # Known (listed) and nobody named as approver: she decides her own request.
        reply(server, request, "ann@example.com", "approve")
        wait_thread(server, "done")
        model.add(text("hello"))
        send(server, mail("lee@ops.example.org", "hello"))  # a listed @domain
        relay.wait_for(3)


def test_a_dmarc_failure_reported_by_our_mail_server_is_refused(tmp_path: Path) -> None:
    with serving(
        tmp_path,
        THREADBOT_EMAIL_AUTH_SERVID="mx.example.com",
        THREADBOT_EMAIL_SENDERS="ann@example.com",
    ) as (
        server,
        relay,
        model,
    ):
        model.add(calls(("deploy", {"service": "api", "version": "2"})))
        send(server, mail("ann@example.com", "deploy the api"))
        request = relay.wait_for(1)[0].message
        n = len(wait_thread(server, "waiting_for_approval")["events"])
        failed = "mx.example.com; spf=fail; dmarc=fail (p=none) header.from=example.com"
        with pytest.raises(smtplib.SMTPDataError) as refused:
            reply(server, request, "ann@example.com", "approve", Authentication_Results=failed)
        assert refused.value.smtp_code == 550 and b"DMARC" in refused.value.smtp_error
        assert len(wait_thread(server, "waiting_for_approval")["events"]) == n
        # The same verdict stamped by another server is the sender's word: ignored.
        forged = failed.replace("mx.example.com", "relay.attacker.example")
        model.add(text("Deployed."))
        reply(server, request, "ann@example.com", "approve", Authentication_Results=forged)
        wait_thread(server, "done")


def test_serve_warns_when_anyone_may_mail_it(tmp_path: Path) -> None:
    with serving(tmp_path, THREADBOT_SMTP=f"0.0.0.0:{free_port()}") as (server, _, _):
        assert "THREADBOT_EMAIL_SENDERS" in server.output()
    with serving(tmp_path) as (server, _, _):
        assert "THREADBOT_EMAIL_SENDERS" not in server.output()


def test_a_mail_resent_after_a_crash_has_the_same_message_id(tmp_path: Path) -> None:
    with serving(tmp_path) as (server, relay, model):
        model.add(calls(("deploy", {"service": "api", "version": "3"})))
        env = server.env
        kept = relay.handle_DATA

        async def kill_after_taking(srv: Any, session: Any, envelope: Any) -> str:
            result = await kept(srv, session, envelope)
            server.kill()  # before the bot records that it delivered
            return result

        relay.handle_DATA = kill_after_taking  # type: ignore[method-assign]
        send(server, mail("ann@example.com", "deploy the api"))
        first = relay.wait_for(1)[0].message
        deadline = time.monotonic() + 10
        while server.proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        relay.handle_DATA = kept  # type: ignore[method-assign]
        again = ServerProcess(env, port=server.port).start()
        try:
            second = relay.wait_for(2)[1].message
            assert second["Message-ID"] == first["Message-ID"]
            assert second["Reply-To"] == first["Reply-To"]
        finally:
            again.stop()
