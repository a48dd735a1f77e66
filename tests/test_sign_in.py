"""Signing in to the web page, end to end: `threadbot serve` with a people
file, the sign-in mail caught by a local relay, Sign in with Slack against
the fake Slack, and real Chromium clicking. Every refusal is tried."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from .fakes import FakeOpenAI, ServerProcess, calls, free_port, text
from .mail_fake import CaptureRelay
from .slack_fake import FakeSlack
from .test_http import env_for, wait_status
from .test_web import chromium

ADMIN = {"Authorization": "Bearer admin-s3cret"}
PEOPLE = """
[people.ann]
name = "Ann Lee"
email = ["ann@example.com"]
slack = "U_ANN"
groups = ["ops"]

[people.bob]
name = "Bob Stone"
email = ["bob@example.com"]
slack = "U_BOB"
"""
LINK = re.compile(r"http://\S+/auth/email/callback\?token=\S+")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.oidc_users = {
        "U_ANN": {"email": "ann@example.com", "email_verified": True, "name": "Ann Lee"},
        "U_EVE": {"email": "eve@elsewhere.example", "email_verified": True, "name": "Eve"},
    }
    with fake.serve() as s:
        yield s


@pytest.fixture(scope="module")
def server(
    relay: CaptureRelay,
    slack: FakeSlack,
    model: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("sign-in")
    (d / "ledger.txt").touch()
    (d / "people.toml").write_text(PEOPLE)
    env = env_for(d / "t.db", model, d / "ledger.txt")
    env.update(
        THREADBOT_PEOPLE=str(d / "people.toml"),
        THREADBOT_APPROVERS="ann",
        THREADBOT_API_TOKEN="admin-s3cret",
        THREADBOT_SMTP=f"127.0.0.1:{free_port()}",
        THREADBOT_EMAIL="bot@example.com",
        THREADBOT_SMTP_RELAY=f"127.0.0.1:{relay.port}",
        SLACK_CLIENT_ID="client-1",
        SLACK_CLIENT_SECRET="client-secret",
        SLACK_API_URL=slack.api_url,
        SLACK_OIDC_AUTHORIZE_URL=slack.authorize_url,
    )
    s = ServerProcess(env).start()
    s.db = d / "t.db"  # type: ignore[attr-defined]
    yield s
    s.stop()


def launch(server: ServerProcess, prompt: str, status: str, user: str | None) -> str:
    with httpx.Client(base_url=server.url, headers=ADMIN) as c:
        body: dict[str, Any] = {"text": prompt}
        if user:
            body["user"] = user  # an admin may start a thread for someone
        thread_id: str = c.post("/threads", json=body).json()["id"]
        wait_status(c, thread_id, status)
    return thread_id


def thread(server: ServerProcess, thread_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/threads/{thread_id}", headers=ADMIN).json()
    return body


def mail_link(server: ServerProcess, relay: CaptureRelay, address: str) -> str:
    """Ask for a sign-in link for `address` and read it from the mail."""
    before = len(relay.messages)
    r = httpx.post(server.url + "/auth/email", json={"email": address})
    assert r.status_code == 202
    # Approvers with an address are mailed their requests too: find the link's mail.
    deadline = time.monotonic() + 10
    while not (
        sent := [
            m
            for m in relay.wait_for(before + 1)[before:]
            if m.message["Subject"] == "Sign in to threadbot"
        ]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    mail = sent[-1]
    assert mail.rcpt_tos == [address]
    body = mail.message.get_body(("plain",))
    assert body is not None
    found = LINK.search(body.get_content())
    assert found, body.get_content()
    return found[0]


def session(server: ServerProcess, link: str) -> tuple[httpx.Client, str]:
    """An API client holding the session a link opens, and its CSRF token."""
    client = httpx.Client(base_url=server.url, timeout=10)
    r = client.get(link)
    assert r.status_code == 303, r.text
    me = client.get("/auth/me").json()
    return client, str(me["csrf"])


def approval(server: ServerProcess, thread_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers=ADMIN) as c:
        body = wait_status(c, thread_id, "done")
    return next(e for e in body["events"] if e["type"] == "approval")


def test_email_link_signs_in_and_the_approval_records_how(
    page: Page, server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    # A shared model: each reply is queued just before the turn that takes it.
    model.add(calls(("deploy", {"service": "api", "version": "7"})))
    mine = launch(server, "deploy api 7", "waiting_for_approval", user="bob")
    model.add(calls(("drop_table", {"table": "users"})))
    other = launch(server, "drop the users table", "waiting_for_approval", user=None)

    # An unknown address gets the same answer and no mail.
    before = len(relay.messages)
    unknown = httpx.post(server.url + "/auth/email", json={"email": "nobody@example.com"})
    by_id = httpx.post(server.url + "/auth/email", json={"email": "ann"})  # an id, not an address
    link = mail_link(server, relay, "ann@example.com")
    known = httpx.post(server.url + "/auth/email", json={"email": "ann@example.com"})
    assert unknown.status_code == by_id.status_code == known.status_code == 202
    assert unknown.json() == by_id.json() == known.json()

    # Only sign-in mail counts: Ann is an approver, mailed the requests too.
    def sign_ins() -> list[list[str]]:
        subject = "Sign in to threadbot"
        return [m.rcpt_tos for m in relay.messages[before:] if m.message["Subject"] == subject]

    deadline = time.monotonic() + 10
    while len(sign_ins()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert sign_ins() == [["ann@example.com"]] * 2
    assert link.startswith(server.url + "/auth/email/callback?token=")

    page.goto(link)
    page.wait_for_url(server.url + "/")
    expect(page.locator("#me")).to_contain_text("Ann Lee · signed in by email link")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    row = page.locator(f"li[data-thread='{mine}']")
    expect(row).to_be_visible()
    expect(page.locator(f"li[data-thread='{other}']")).to_have_count(0)  # she may not decide it

    row.get_by_role("link", name="deploy api 7").click()
    expect(page.get_by_role("heading", name="Approve deploy?")).to_be_visible()
    model.add(text("Deployed 7."))
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("alert")).to_have_count(0)
    expect(page.locator("#state")).to_have_text("Done")
    expect(page.locator("#timeline")).to_contain_text("approved by Ann Lee via session:email")
    source = approval(server, mine)["source"]
    assert (source["user"], source["person"], source["auth"]) == ("ann", "ann", "session:email")
    markdown = httpx.get(f"{server.url}/threads/{mine}/markdown", headers=ADMIN).text
    assert "by **Ann Lee via session:email**" in markdown

    # A link works once.
    again = page.context.browser
    assert again is not None
    fresh = again.new_context()
    try:
        p = fresh.new_page()
        response = p.goto(link)
        assert response is not None and response.status == 400
        expect(p.get_by_role("heading")).to_have_text("This sign-in link does not work")
        assert not [c for c in fresh.cookies() if c["name"] == "threadbot_session"]
    finally:
        fresh.close()


def test_an_expired_or_forged_link_is_refused(
    browser: Browser, server: ServerProcess, relay: CaptureRelay
) -> None:
    link = mail_link(server, relay, "ann@example.com")
    secret = parse_qs(urlsplit(link).query)["token"][0]
    db_path: Path = server.db  # type: ignore[attr-defined]
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE sign_in_links SET expires_at = ? WHERE hash = ?",
            [time.time() - 1, hashlib.sha256(secret.encode()).hexdigest()],
        )
    context = browser.new_context()
    try:
        p = context.new_page()
        for url in (link, link[:-4] + "AAAA", server.url + "/auth/email/callback"):
            response = p.goto(url)
            assert response is not None and response.status == 400, url
            expect(p.get_by_role("heading")).to_have_text("This sign-in link does not work")
        assert not [c for c in context.cookies() if c["name"] == "threadbot_session"]
    finally:
        context.close()


def test_session_cookie_flags_csrf_and_sign_out(
    server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("deploy", {"service": "db", "version": "1"})))
    thread_id = launch(server, "deploy db 1", "waiting_for_approval", user="bob")
    link = mail_link(server, relay, "ann@example.com")
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.get(link)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert cookie.startswith("threadbot_session=")
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "secure" not in cookie  # served over plain http on loopback
        me = c.get("/auth/me").json()
        assert me["person"] == "ann" and me["auth"] == "session:email" and me["csrf"]
        assert me["admin"] is False

        url = f"/threads/{thread_id}/approvals"
        assert c.post(url, json={"approved": True}).status_code == 403
        wrong = c.post(url, json={"approved": True}, headers={"X-CSRF-Token": "guess"})
        assert wrong.status_code == 403
        assert thread(server, thread_id)["status"] == "waiting_for_approval"

        assert c.post("/auth/logout", json={}).status_code == 403  # needs the header too
        out = c.post("/auth/logout", json={}, headers={"X-CSRF-Token": me["csrf"]})
        assert out.status_code == 200
        assert c.get("/auth/me").status_code == 401
        assert c.get("/threads").status_code == 401
    # Clean up: the admin rejects it.
    model.add(text("Not deployed."))
    httpx.post(
        f"{server.url}{url}", json={"approved": False, "comment": "test over"}, headers=ADMIN
    )


def test_nobody_signed_in_sees_the_sign_in_form(browser: Browser, server: ServerProcess) -> None:
    assert httpx.get(server.url + "/auth/me").status_code == 401
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(server.url + "/")
        expect(p.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(p.get_by_role("link", name="Sign in with Slack")).to_be_visible()
        expect(p.locator("#main")).to_be_hidden()
        p.get_by_label("Your email address").fill("nobody@example.com")
        p.get_by_role("button", name="Email me a sign-in link").click()
        expect(p.get_by_role("status").first).to_contain_text("a sign-in link is on its way")
    finally:
        context.close()


def test_sign_in_with_slack(
    page: Page, server: ServerProcess, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(calls(("deploy", {"service": "web", "version": "3"})))
    thread_id = launch(server, "deploy web 3", "waiting_for_approval", user="bob")
    slack.oidc_user = "U_ANN"
    page.goto(server.url + "/")
    page.get_by_role("link", name="Sign in with Slack").click()
    page.wait_for_url(server.url + "/")
    expect(page.locator("#me")).to_contain_text("Ann Lee · signed in with Slack")
    page.goto(f"{server.url}/ui/threads/{thread_id}")
    model.add(text("Deployed 3."))
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#timeline")).to_contain_text("approved by Ann Lee via session:slack")
    source = approval(server, thread_id)["source"]
    assert (source["person"], source["auth"]) == ("ann", "session:slack")
    token = slack.called("openid.connect.token")[-1]
    assert token["redirect_uri"] == server.url + "/auth/slack/callback"


def test_slack_callbacks_that_are_refused(server: ServerProcess, slack: FakeSlack) -> None:
    def start(c: httpx.Client) -> dict[str, str]:
        r = c.get("/auth/slack")
        assert r.status_code == 303
        query = parse_qs(urlsplit(r.headers["location"]).query)
        assert query["scope"] == ["openid email profile"]
        assert query["client_id"] == ["client-1"]
        return {k: v[0] for k, v in query.items()}

    def no_session(r: httpx.Response) -> bool:
        return "threadbot_session=" not in r.headers.get("set-cookie", "")

    with httpx.Client(base_url=server.url, timeout=10) as c:
        # The state does not match the one this browser was given.
        sent = start(c)
        code = slack.issue_code("U_ANN", sent["nonce"])
        r = c.get("/auth/slack/callback", params={"code": code, "state": "forged"})
        assert r.status_code == 400 and no_session(r)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        # Login CSRF: someone else's code and state, in a browser that never started.
        r = c.get("/auth/slack/callback", params={"code": code, "state": sent["state"]})
        assert r.status_code == 400 and no_session(r)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        # Slack's ID token carries another sign-in's nonce.
        sent = start(c)
        code = slack.issue_code("U_ANN", "another-nonce")
        r = c.get("/auth/slack/callback", params={"code": code, "state": sent["state"]})
        assert r.status_code == 400 and no_session(r)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        # A code Slack does not know.
        sent = start(c)
        r = c.get("/auth/slack/callback", params={"code": "made-up", "state": sent["state"]})
        assert r.status_code == 400 and no_session(r)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        # A Slack user who is not in the people file.
        sent = start(c)
        code = slack.issue_code("U_EVE", sent["nonce"])
        r = c.get("/auth/slack/callback", params={"code": code, "state": sent["state"]})
        assert r.status_code == 403 and no_session(r)
        assert "is not in this threadbot" in r.text
        assert c.get("/auth/me").status_code == 401


def test_bob_may_not_decide_anns_approval(
    page: Page, server: ServerProcess, relay: CaptureRelay, model: FakeOpenAI
) -> None:
    model.add(calls(("deploy", {"service": "cache", "version": "9"})))
    thread_id = launch(server, "deploy cache 9", "waiting_for_approval", user="bob")
    page.goto(mail_link(server, relay, "bob@example.com"))
    expect(page.locator("#me")).to_contain_text("Bob Stone · signed in by email link")
    page.get_by_role("link", name="deploy cache 9").click()
    expect(page.get_by_role("heading", name="Approve deploy?")).to_be_visible()
    expect(page.locator("#pending")).to_contain_text("Only Ann Lee may decide this")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Fork a new thread from event 0")).to_have_count(0)

    client, csrf = session(server, mail_link(server, relay, "bob@example.com"))
    try:
        r = client.post(
            f"/threads/{thread_id}/approvals",
            json={"approved": True},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 403, r.text
        # Nor by claiming to be ann.
        r = client.post(
            f"/threads/{thread_id}/approvals",
            json={"approved": True, "user": "ann"},
            headers={"X-CSRF-Token": csrf},
        )
        assert r.status_code == 403, r.text
    finally:
        client.close()
    assert thread(server, thread_id)["status"] == "waiting_for_approval"
