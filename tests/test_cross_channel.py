"""Approvals across channels, on one `threadbot serve` with Slack and email:
a thread started in Slack is approved by email, one started by mail is
approved in Slack, and each post of the request says who settled it and how.
Signed requests through the real Bolt app and the fake Slack Web API; the
real aiosmtpd server, `smtplib` and a local relay; the real `openai` client
against the fake model; a real SQLite file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import REPO, FakeOpenAI, ServerProcess, calls, free_port, text
from .mail_fake import CaptureRelay, text_of
from .slack_fake import SECRET, FakeSlack, SlackSender
from .test_email import new_mail, reply, send
from .test_email_timers import wait_mail
from .test_http import env_for
from .test_slack import mention, posts
from .test_slack_deadlines import buttons, msg, updated

ADMIN = {"Authorization": "Bearer cross-admin"}
BOT = "bot@example.com"
PEOPLE = """
[people.lee]
name = "Lee Park"
email = "lee@example.com"

[people.sam]
name = "Sam Ortiz"
slack = "USAM"

[people.ann]
name = "Ann"
slack = "UANN"
email = "ann@example.com"
"""


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def server(
    slack: FakeSlack, relay: CaptureRelay, model: FakeOpenAI, workdir: Path
) -> Iterator[ServerProcess]:
    (workdir / "people.toml").write_text(PEOPLE)
    env = env_for(workdir / "threadbot.db", model, workdir / "ledger.txt")
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        THREADBOT_TOOLS=str(REPO / "tests" / "cross_tools.py"),
        THREADBOT_PEOPLE=str(workdir / "people.toml"),
        THREADBOT_API_TOKEN=ADMIN["Authorization"].split()[1],
        THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
        THREADBOT_EMAIL=BOT,
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
        THREADBOT_SECRET="cross-secret",
    )
    s = ServerProcess(env).start()
    s.smtp_port = int(env["THREADBOT_SMTP"].rsplit(":", 1)[1])  # type: ignore[attr-defined]
    yield s
    s.stop()


def thread(server: ServerProcess, thread_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        body: dict[str, Any] = httpx.get(f"{server.url}/threads/{thread_id}", headers=ADMIN).json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_a_thread_started_in_slack_is_approved_by_email(
    server: ServerProcess, slack: FakeSlack, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    sender = SlackSender(server.url)
    model.add(calls(("deploy", {"service": "api"})))
    sender.event(mention("C_OPS", "deploy the api", user="UANN"))
    request = posts(slack, "C_OPS", 1)[0]
    assert "tb_approve" in buttons(request)
    thread_id = next(
        t["id"]
        for t in httpx.get(f"{server.url}/threads", headers=ADMIN).json()
        if t["title"] == "deploy the api"
    )
    # Lee has only an address: the request reaches him by mail, with his own reply address.
    mailed = wait_mail(relay, thread_id, "lee@example.com", "deploy")
    assert "reply" in text_of(mailed).lower()
    model.add(text("Deployed the api."))
    reply(server, mailed, "approve", sender="lee@example.com")
    body = thread(server, thread_id, "done")
    decision = next(e for e in body["events"] if e["type"] == "approval")
    assert (decision["source"]["person"], decision["source"]["auth"]) == ("lee", "email:signed")
    # The Slack post loses its buttons and says by whom, and how.
    update = updated(slack, request["_ts"], "Lee Park")
    assert "email" in json.dumps(update["blocks"])


def test_a_thread_started_by_mail_is_approved_in_slack(
    server: ServerProcess, slack: FakeSlack, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("restart", {"service": "db"})))
    send(
        server,
        new_mail("restart the db", "restart the db", sender="ann@example.com"),
        sender="ann@example.com",
    )
    # Sam has only a Slack id: the request reaches him by DM, with buttons.
    dm = posts(slack, "DUSAM", 1)[0]
    assert "tb_approve" in buttons(dm) and "From a thread" in json.dumps(dm["blocks"])
    thread_id = next(
        t["id"]
        for t in httpx.get(f"{server.url}/threads", headers=ADMIN).json()
        if t["title"] == "restart the db"
    )
    model.add(text("Restarted the db."))
    assert SlackSender(server.url).click("USAM", msg(dm), "DUSAM", "tb_approve").status_code == 200
    body = thread(server, thread_id, "done")
    decision = next(e for e in body["events"] if e["type"] == "approval")
    assert (decision["source"]["user"], decision["source"]["auth"]) == ("USAM", "slack")
    updated(slack, dm["_ts"], "Approved by <@USAM>")
    # Ann, who asked by mail, hears the answer there.
    wait_mail(relay, thread_id, "ann@example.com", "Restarted the db.")
