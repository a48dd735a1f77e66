"""Slack installed into several workspaces: Slack's OAuth flow through the
real Bolt app inside `threadbot serve`, against the local fake of Slack's
Web API (`oauth.v2.access`, `auth.test` per token), the installations in the
server's own SQLite file, and two workspaces whose identical channel, message
and user ids never meet."""

from __future__ import annotations

import itertools
import json
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, calls, free_port, text
from .slack_fake import SECRET, FakeSlack, SlackSender, signed_headers
from .test_http import env_for

ADMIN = {"Authorization": "Bearer admin-oauth"}
PEOPLE = """
[people.lee]
name = "Lee"
slack = "T1:ULEAD"
"""

_ts = itertools.count(1)


def new_ts() -> str:
    return f"1900000{next(_ts):03d}.000300"


class TeamSender(SlackSender):
    """Signed requests as Slack sends them from one workspace."""

    def __init__(self, base_url: str, team: str) -> None:
        super().__init__(base_url)
        self.team = team

    def signed_event(
        self, event: dict[str, Any], *, event_id: str | None = None
    ) -> tuple[str, dict[str, str]]:
        body, _ = super().signed_event(event, event_id=event_id)
        payload = json.loads(body)
        payload["team_id"] = self.team
        payload["authorizations"] = [
            {"team_id": self.team, "user_id": "UBOT" + self.team, "is_bot": True}
        ]
        body = json.dumps(payload)
        return body, {"Content-Type": "application/json", **signed_headers(body)}

    def interaction(self, payload: dict[str, Any]) -> httpx.Response:
        payload["team"] = {"id": self.team, "domain": self.team.lower()}
        payload["user"]["team_id"] = self.team
        return super().interaction(payload)


def mention(channel: str, text_: str, user: str = "U1", ts: str | None = None) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": user,
        "text": f"<@UBOT> {text_}",
        "ts": ts or new_ts(),
        "channel": channel,
    }


def reply(channel: str, text_: str, thread_ts: str, user: str = "U1") -> dict[str, Any]:
    return {
        "type": "message",
        "user": user,
        "text": text_,
        "ts": new_ts(),
        "thread_ts": thread_ts,
        "channel": channel,
        "channel_type": "channel",
    }


def server_env(slack: FakeSlack, model: FakeOpenAI, workdir: Path, port: int) -> dict[str, str]:
    (workdir / "people.toml").write_text(PEOPLE)
    env = env_for(workdir / "threadbot.db", model, workdir / "ledger.txt")
    env.update(
        SLACK_CLIENT_ID="client-1",
        SLACK_CLIENT_SECRET="client-secret",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        SLACK_OAUTH_AUTHORIZE_URL=slack.install_url,
        SLACK_OIDC_AUTHORIZE_URL=slack.authorize_url,
        SLACK_REDIRECT_URI=f"http://127.0.0.1:{port}/slack/oauth_redirect",
        SLACK_TEAMS="T1,T2,T4",
        THREADBOT_PEOPLE=str(workdir / "people.toml"),
        THREADBOT_APPROVERS="lee",
        THREADBOT_API_TOKEN="admin-oauth",
    )
    return env


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(slack: FakeSlack, model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    s = ServerProcess(server_env(slack, model, workdir, port), port).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _script_empty(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def bots(db: Path) -> dict[str, str]:
    """What slack_sdk's store holds in the server's database: team → bot token."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT team_id, bot_token FROM slack_bots ORDER BY installed_at, id"
        ).fetchall()
    conn.close()
    return {team: token for team, token in rows}


class Browser:
    """An installer's browser. Bolt's state cookie is `Secure`: over the
    https a real install runs on, the browser sends it back; httpx would not
    over the plain http of these tests, so this browser keeps its cookies
    itself, as a browser on https would."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def get(
        self, url: str, params: dict[str, str] | None = None, *, follow: bool = True
    ) -> httpx.Response:
        while True:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            r = httpx.get(url, params=params, headers={"Cookie": cookie} if cookie else {})
            for header in r.headers.get_list("set-cookie"):
                name, _, rest = header.partition("=")
                if "expires=thu, 01 jan 1970" in header.lower():
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = rest.split(";")[0]
            if not (follow and r.is_redirect):
                return r
            url, params = r.headers["location"], None


def install(server: ServerProcess, slack: FakeSlack, team: str) -> httpx.Response:
    """An admin of `team` installs threadbot: their browser follows every
    redirect, from /slack/install through Slack's authorize page and back."""
    slack.installing = team
    return Browser().get(server.url + "/slack/install")


def start_install(server: ServerProcess) -> tuple[Browser, str]:
    """A browser at /slack/install, stopped at the redirect: it and the state."""
    browser = Browser()
    r = browser.get(server.url + "/slack/install", follow=False)
    assert r.status_code == 302
    location = urllib.parse.urlsplit(r.headers["location"])
    return browser, urllib.parse.parse_qs(location.query)["state"][0]


@pytest.fixture(scope="module")
def installed(server: ServerProcess, slack: FakeSlack, workdir: Path) -> dict[str, str]:
    for team in ("T1", "T2"):
        if team not in bots(workdir / "threadbot.db"):
            assert install(server, slack, team).status_code == 200
    return bots(workdir / "threadbot.db")


def posts(slack: FakeSlack, token: str, channel: str, count: int) -> list[dict[str, Any]]:
    """The posts to `channel` made with `token`, once there are `count`."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            c.args
            for c in slack.calls_with(token, "chat.postMessage")
            if c.args["channel"] == channel
        ]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} posts to {channel} with {token}, wanted {count}")
        time.sleep(0.02)


def said(slack: FakeSlack, token: str, channel: str, count: int) -> list[tuple[str, str]]:
    """What threadbot said in `channel` with `token`, posted whole or
    streamed and stopped (a model that streams makes the answer a streamed message):
    (thread_ts, text) in order, once there are `count`."""
    deadline = time.monotonic() + 10
    while True:
        calls = [c for c in slack.calls_with(token) if c.args.get("channel") == channel]
        found = []
        for c in calls:
            if c.method == "chat.postMessage":
                found.append((str(c.args.get("thread_ts")), str(c.args.get("text"))))
            elif c.method == "chat.startStream":
                ts = c.args["_ts"]
                parts = [c.args] + [
                    x.args
                    for x in calls
                    if x.method in ("chat.appendStream", "chat.stopStream") and x.args["ts"] == ts
                ]
                if not any(x.method == "chat.stopStream" and x.args["ts"] == ts for x in calls):
                    continue  # still being written
                text = "".join(str(a.get("markdown_text") or "") for a in parts)
                found.append((str(c.args.get("thread_ts")), text))
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} said in {channel} with {token}, wanted {count}")
        time.sleep(0.02)


def threads(server: ServerProcess) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = httpx.get(server.url + "/threads", headers=ADMIN).json()
    return listed


def thread(server: ServerProcess, thread_id: str, status: str | None = None) -> dict[str, Any]:
    """A thread (once it is `status`, with its last post recorded)."""
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = httpx.get(server.url + f"/threads/{thread_id}", headers=ADMIN).json()
        if status is None or (
            body["status"] == status and body["events"][-1]["type"] == "delivered"
        ):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"thread {thread_id} is {body['status']}, not {status}")
        time.sleep(0.02)


def newest_thread(server: ServerProcess, known: set[str]) -> str:
    deadline = time.monotonic() + 10
    while True:
        new = [t["id"] for t in threads(server) if t["id"] not in known]
        if new:
            assert len(new) == 1, new
            return new[0]
        if time.monotonic() > deadline:
            raise AssertionError("no new thread")
        time.sleep(0.02)


# -- the install flow ---------------------------------------------------------


def test_install_sends_the_browser_to_slack_with_a_state(server: ServerProcess) -> None:
    browser, state = start_install(server)
    r = browser.get(server.url + "/slack/install", follow=False)
    location = urllib.parse.urlsplit(r.headers["location"])
    query = urllib.parse.parse_qs(location.query)
    assert location.path == "/oauth/v2/authorize"
    assert query["client_id"] == ["client-1"]
    assert query["redirect_uri"] == [f"{server.url}/slack/oauth_redirect"]
    # The manifest's bot scopes, and no user scopes.
    from channels.slack.install import SCOPES

    assert query["scope"] == [",".join(SCOPES)]
    assert not query.get("user_scope", [""])[0]
    # The state is this browser's: a cookie it must bring back.
    assert f"slack-app-oauth-state={query['state'][0]}" in r.headers["set-cookie"]
    assert state != query["state"][0]  # a new one each time


def test_manifest_scopes_are_the_ones_asked_for() -> None:
    from channels.slack.install import SCOPES

    manifest = (Path(__file__).parent.parent / "manifest.yml").read_text()
    bot = manifest.split("bot:\n", 1)[1].split("settings:", 1)[0]
    listed = [line.split("#")[0].strip(" -") for line in bot.splitlines()]
    assert sorted(s for s in listed if s) == sorted(SCOPES)


def test_install_saves_the_workspace_in_the_database(
    server: ServerProcess, slack: FakeSlack, workdir: Path
) -> None:
    before = len(slack.called("oauth.v2.access"))
    r = install(server, slack, "T1")
    assert r.status_code == 200
    # The code was exchanged with the app's credentials, for the redirect URL asked with.
    exchange = [c for c in slack.calls if c.method == "oauth.v2.access"][before:]
    assert len(exchange) == 1 and exchange[0].auth.startswith("Basic ")
    assert exchange[0].args["redirect_uri"] == f"{server.url}/slack/oauth_redirect"
    saved = bots(workdir / "threadbot.db")
    assert saved["T1"].startswith("xoxb-T1-") and saved["T1"] in slack.workspaces
    # Bolt checked the new token once (auth.test), with that token.
    assert slack.calls_with(saved["T1"], "auth.test")


def test_the_database_holding_the_tokens_is_its_owners_only(
    server: ServerProcess, workdir: Path
) -> None:
    """The workspaces' tokens are in the SQLite file in plain text: threadbot
    made it (and SQLite its -wal and -shm files) readable by its user only."""
    db = workdir / "threadbot.db"
    assert bots(db)  # the install before this one
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}


def test_a_callback_without_the_browsers_cookie_is_refused(
    server: ServerProcess, slack: FakeSlack, workdir: Path
) -> None:
    """Another browser (an attacker's link) cannot finish someone's install;
    the install it interrupted still can."""
    browser, state = start_install(server)
    redirect = f"{server.url}/slack/oauth_redirect"
    code = slack.issue_install_code("T2", redirect)
    exchanged = len(slack.called("oauth.v2.access"))
    r = Browser().get(redirect, {"code": code, "state": state})
    assert r.status_code == 400
    assert len(slack.called("oauth.v2.access")) == exchanged  # the code was never used
    r = browser.get(redirect, {"code": code, "state": state})
    assert r.status_code == 200
    assert "T2" in bots(workdir / "threadbot.db")


def test_a_state_is_good_once(server: ServerProcess, slack: FakeSlack) -> None:
    browser, state = start_install(server)
    redirect = f"{server.url}/slack/oauth_redirect"
    first = browser.get(
        redirect, {"code": slack.issue_install_code("T1", redirect), "state": state}
    )
    assert first.status_code == 200
    assert "slack-app-oauth-state" not in browser.cookies  # Bolt clears it once used
    # The same state again, cookie and all (a replayed redirect): refused.
    browser.cookies["slack-app-oauth-state"] = state
    again = browser.get(
        redirect, {"code": slack.issue_install_code("T1", redirect), "state": state}
    )
    assert again.status_code == 401
    assert "invalid_state" in again.text


def test_a_state_threadbot_never_issued_is_refused(server: ServerProcess, slack: FakeSlack) -> None:
    exchanged = len(slack.called("oauth.v2.access"))
    forged = "f0rged-state"
    r = httpx.get(
        f"{server.url}/slack/oauth_redirect",
        params={"code": slack.issue_install_code("T1"), "state": forged},
        cookies={"slack-app-oauth-state": forged},
    )
    assert r.status_code == 401 and "invalid_state" in r.text
    assert len(slack.called("oauth.v2.access")) == exchanged


def test_a_code_slack_does_not_know_installs_nothing(
    server: ServerProcess, slack: FakeSlack, workdir: Path
) -> None:
    saved = bots(workdir / "threadbot.db")
    browser, state = start_install(server)
    r = browser.get(server.url + "/slack/oauth_redirect", {"code": "made-up", "state": state})
    assert r.status_code == 401 and "invalid_code" in r.text
    assert bots(workdir / "threadbot.db") == saved


def test_an_install_the_admin_cancelled_installs_nothing(
    server: ServerProcess, workdir: Path
) -> None:
    saved = bots(workdir / "threadbot.db")
    browser, state = start_install(server)
    r = browser.get(
        server.url + "/slack/oauth_redirect", {"error": "access_denied", "state": state}
    )
    assert "access_denied" in r.text
    assert bots(workdir / "threadbot.db") == saved


def test_a_workspace_not_listed_cannot_install(
    server: ServerProcess, slack: FakeSlack, workdir: Path
) -> None:
    r = install(server, slack, "T9")
    assert r.status_code == 403
    assert "T9" not in bots(workdir / "threadbot.db")


def test_the_install_pages_answer_only_to_this_servers_host(server: ServerProcess) -> None:
    r = httpx.get(server.url + "/slack/install", headers={"Host": "evil.example"})
    assert r.status_code == 400


# -- two workspaces -----------------------------------------------------------


def test_two_workspaces_with_the_same_ids_stay_apart(
    server: ServerProcess, slack: FakeSlack, model: FakeOpenAI, installed: dict[str, str]
) -> None:
    """The same channel id, message ts and user id in two workspaces: two
    threads, each answered in its own workspace with its own token, and a
    reply in one never reaches the other."""
    one, two = TeamSender(server.url, "T1"), TeamSender(server.url, "T2")
    known = {t["id"] for t in threads(server)}
    ts = new_ts()

    model.add(text("Hello, one."))
    assert one.event(mention("CSAME", "hi", ts=ts)).status_code == 200
    first = newest_thread(server, known)
    thread(server, first, "done")
    model.add(text("Hello, two."))
    assert two.event(mention("CSAME", "hi", ts=ts)).status_code == 200
    second = newest_thread(server, known | {first})
    thread(server, second, "done")

    assert said(slack, installed["T1"], "CSAME", 1) == [(ts, "Hello, one.")]
    assert said(slack, installed["T2"], "CSAME", 1) == [(ts, "Hello, two.")]
    # The working reaction went on each workspace's own message.
    for team in ("T1", "T2"):
        added = slack.calls_with(installed[team], "reactions.add")
        assert any(c.args["timestamp"] == ts and c.args["channel"] == "CSAME" for c in added)

    # Who wrote: U1 of each workspace, two different people.
    users = [thread(server, t)["events"][0]["source"]["user"] for t in (first, second)]
    assert users == ["T1:U1", "T2:U1"]

    # A reply in workspace two's Slack thread continues its thread only.
    model.add(text("More, two."))
    assert two.event(reply("CSAME", "more", thread_ts=ts)).status_code == 200
    after = thread(server, second, "done")
    assert [e["text"] for e in after["events"] if e["type"] == "user_message"] == ["hi", "more"]
    assert said(slack, installed["T2"], "CSAME", 2)[1] == (ts, "More, two.")
    assert [e["type"] for e in thread(server, first)["events"]].count("user_message") == 1
    assert said(slack, installed["T1"], "CSAME", 1) == [(ts, "Hello, one.")]


def test_an_approver_of_one_workspace_is_nobody_in_the_other(
    server: ServerProcess,
    slack: FakeSlack,
    model: FakeOpenAI,
    installed: dict[str, str],
    workdir: Path,
) -> None:
    """Lee is ULEAD in workspace one. ULEAD of workspace two is someone
    else: their click on the approval is refused; Lee's, from the direct
    message in workspace one, approves."""
    one, two = TeamSender(server.url, "T1"), TeamSender(server.url, "T2")
    known = {t["id"] for t in threads(server)}
    model.add(calls(("deploy", {"service": "api", "version": "9"})), text("Deployed."))
    two.event(mention("CAPPR", "deploy api 9"))
    thread_id = newest_thread(server, known)
    waiting = thread(server, thread_id, "waiting_for_approval")
    [request] = posts(slack, installed["T2"], "CAPPR", 1)
    assert "Approval needed" in request["text"]

    # Lee is asked in their own workspace, with its token.
    opened = slack.calls_with(installed["T1"], "conversations.open")
    assert any(c.args["users"] == "ULEAD" for c in opened)
    [dm] = posts(slack, installed["T1"], "DULEAD", 1)
    assert not [c for c in slack.calls_with(installed["T2"], "conversations.open")]

    # ULEAD of workspace two clicks Approve on the thread's post: refused.
    delivered = next(e for e in waiting["events"] if e["type"] == "delivered")
    on_two = {"ts": delivered["refs"]["ts"], "blocks": request["blocks"]}
    told = len(slack.calls_with(installed["T2"], "chat.postEphemeral"))
    assert two.click("ULEAD", on_two, "CAPPR", "tb_approve").status_code == 200
    deadline = time.monotonic() + 10
    while len(slack.calls_with(installed["T2"], "chat.postEphemeral")) == told:
        assert time.monotonic() < deadline, "the refusal was not said"
        time.sleep(0.02)
    refusal = slack.calls_with(installed["T2"], "chat.postEphemeral")[-1].args
    assert refusal["user"] == "ULEAD" and "not one of the approvers" in refusal["text"]
    assert thread(server, thread_id)["status"] == "waiting_for_approval"
    assert "deploy api 9" not in (workdir / "ledger.txt").read_text()

    # Lee clicks Approve in their direct message in workspace one.
    dm_post = next(
        p for p in delivered["refs"].get("posts", "").split() if p.startswith("T1:DULEAD/")
    )
    on_one = {"ts": dm_post.split("/", 1)[1], "blocks": dm["blocks"]}
    assert one.click("ULEAD", on_one, "DULEAD", "tb_approve").status_code == 200
    done = thread(server, thread_id, "done")
    approval = next(e for e in done["events"] if e["type"] == "approval")
    assert (approval["source"]["user"], approval["source"]["person"]) == ("T1:ULEAD", "lee")
    assert "deploy api 9" in (workdir / "ledger.txt").read_text()
    assert said(slack, installed["T2"], "CAPPR", 2)[1][1] == "Deployed."
    # Both posts of the request were updated, each with its workspace's token.
    assert any(
        c.args["channel"] == "DULEAD" for c in slack.calls_with(installed["T1"], "chat.update")
    )
    assert any(
        c.args["channel"] == "CAPPR" for c in slack.calls_with(installed["T2"], "chat.update")
    )


def test_requests_from_a_workspace_not_installed_change_nothing(
    server: ServerProcess, slack: FakeSlack, installed: dict[str, str]
) -> None:
    before = [t["id"] for t in threads(server)]
    posted = len(slack.called("chat.postMessage"))
    r = TeamSender(server.url, "T3").event(mention("CX", "deploy everything"))
    # Bolt answers (with a word for the user), having run no listener.
    assert r.status_code == 200
    assert [t["id"] for t in threads(server)] == before
    assert len(slack.called("chat.postMessage")) == posted


def test_an_uninstalled_workspace_is_forgotten(
    server: ServerProcess, slack: FakeSlack, workdir: Path
) -> None:
    assert install(server, slack, "T4").status_code == 200
    assert "T4" in bots(workdir / "threadbot.db")
    uninstalled = {"type": "app_uninstalled", "ts": new_ts()}
    assert TeamSender(server.url, "T4").event(uninstalled).status_code == 200
    assert "T4" not in bots(workdir / "threadbot.db")
    with sqlite3.connect(workdir / "threadbot.db") as conn:
        left = conn.execute("SELECT count(*) FROM slack_installations WHERE team_id = 'T4'")
        assert left.fetchone() == (0,)
    conn.close()


def test_installations_survive_a_restart(
    server: ServerProcess,
    slack: FakeSlack,
    model: FakeOpenAI,
    installed: dict[str, str],
) -> None:
    server.stop()
    again = ServerProcess(server.env, server.port).start()
    try:
        known = {t["id"] for t in threads(again)}
        exchanged = len(slack.called("oauth.v2.access"))
        model.add(text("Still here."))
        TeamSender(again.url, "T2").event(mention("CRESTART", "hello again"))
        thread(again, newest_thread(again, known), "done")
        assert said(slack, installed["T2"], "CRESTART", 1)[0][1] == "Still here."
        assert len(slack.called("oauth.v2.access")) == exchanged  # no new install
    finally:
        again.stop()
        server.start()


def test_signing_in_with_slack_names_the_person_of_that_workspace(
    server: ServerProcess, slack: FakeSlack
) -> None:
    """The web page's Sign in with Slack: ULEAD of workspace one is Lee;
    ULEAD of workspace two is nobody in the people file."""
    server_env = server.env
    assert server_env["SLACK_CLIENT_ID"] == "client-1"  # the same app signs people in
    slack.oidc_user = "ULEAD"
    for team, status in (("T2", 403), ("T1", 303)):
        slack.oidc_users["ULEAD"] = {"https://slack.com/team_id": team}
        with httpx.Client(base_url=server.url, timeout=10) as browser:
            r = browser.get("/auth/slack")
            r = browser.get(r.headers["location"], follow_redirects=False)  # Slack's page
            r = browser.get(r.headers["location"])  # back to the callback
            assert r.status_code == status, r.text
            if status == 303:
                me = browser.get("/auth/me").json()
                assert me["person"] == "lee"


# -- settings and refusals at start-up ------------------------------------------


def test_which_slack_the_environment_turns_on() -> None:
    from channels.slack import SlackSettings

    app = {"SLACK_CLIENT_ID": "c", "SLACK_CLIENT_SECRET": "s"}
    # The app's credentials alone sign people in on the web page: no Slack channel.
    assert SlackSettings.from_env(app) is None
    oauth = SlackSettings.from_env({**app, "SLACK_SIGNING_SECRET": "x"})
    assert oauth is not None and oauth.oauth and oauth.bot_token is None
    # A bot token is one workspace, as it always was, whatever else is set.
    one = SlackSettings.from_env({**app, "SLACK_SIGNING_SECRET": "x", "SLACK_BOT_TOKEN": "xoxb"})
    assert one is not None and not one.oauth and one.bot_token == "xoxb"


def test_keys_and_ids_with_and_without_a_workspace() -> None:
    from channels.slack.settings import (
        bare,
        is_user_id,
        mention,
        post_route_key,
        route_key,
        team_of,
    )

    # One workspace's token: the keys threads were stored with before.
    assert route_key("C1", "1.2") == "slack:C1:1.2"
    assert post_route_key("D1", "1.2") == "slack:post:D1:1.2"
    # Several: the workspace is part of every key, so identical ids never meet.
    assert route_key("C1", "1.2", "T1") == "slack:T1:C1:1.2" != route_key("C1", "1.2", "T2")
    assert post_route_key("D1", "1.2", "T1") == "slack:post:T1:D1:1.2"
    assert (team_of("T1:U2"), bare("T1:U2"), team_of("U2"), bare("U2")) == ("T1", "U2", None, "U2")
    assert is_user_id("T1:U2") and is_user_id("U2") and not is_user_id("lee")
    assert mention("T1:U2") == "<@U2>"


def refused_at_start(env: dict[str, str]) -> str:
    with pytest.raises(RuntimeError) as e:
        ServerProcess(env).start()
    return str(e.value)


def test_start_up_refuses_an_install_with_no_workspaces_listed(
    slack: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "ledger.txt").touch()
    env = server_env(slack, model, tmp_path, free_port())
    del env["SLACK_TEAMS"]
    assert "set SLACK_TEAMS" in refused_at_start(env)


def test_start_up_refuses_bare_slack_ids_in_the_people_file(
    slack: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "ledger.txt").touch()
    env = server_env(slack, model, tmp_path, free_port())
    (tmp_path / "people.toml").write_text('[people.lee]\nslack = "ULEAD"\n')
    out = refused_at_start(env)
    assert "lee's slack 'ULEAD' needs its workspace" in out
    (tmp_path / "people.toml").write_text(PEOPLE)
    out = refused_at_start({**env, "THREADBOT_APPROVERS": "U0BARE"})
    assert "THREADBOT_APPROVERS: the Slack id 'U0BARE' needs its workspace" in out
    tools = tmp_path / "tools.py"
    tools.write_text(
        "from bot import tool\n\n\n"
        "@tool(requires_approval=True, approvers=['U0TOOL'])\n"
        "def purge(cache: str) -> str:\n"
        '    """Purge a cache."""\n'
        "    return cache\n"
    )
    out = refused_at_start({**env, "THREADBOT_TOOLS": str(tools)})
    assert "the tool purge's approvers: the Slack id 'U0TOOL' needs its workspace" in out


def test_on_postgresql_installations_are_kept_in_its_database(
    slack: FakeSlack, model: FakeOpenAI, tmp_path: Path, pg_url: str
) -> None:
    """The same flow with threadbot's database on PostgreSQL: slack_sdk's
    SQLAlchemy stores keep the installation there, and a restarted server
    (another replica alike) finds it."""
    import psycopg

    (tmp_path / "ledger.txt").touch()
    port = free_port()
    env = {**server_env(slack, model, tmp_path, port), "THREADBOT_DB": pg_url}
    first = ServerProcess(env, port).start()
    try:
        assert install(first, slack, "T2").status_code == 200
    finally:
        first.stop()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT team_id, bot_token FROM slack_bots").fetchall()
        states = conn.execute("SELECT count(*) FROM slack_oauth_states").fetchone()
    [(team, token)] = rows
    assert team == "T2" and token in slack.workspaces
    assert states == (0,)  # the state was used up
    again = ServerProcess(env, port).start()
    try:
        model.add(text("From PostgreSQL."))
        TeamSender(again.url, "T2").event(mention("CPG", "hello"))
        assert said(slack, token, "CPG", 1)[0][1] == "From PostgreSQL."
        # Refusals hold there too: a state used once is refused the second time.
        browser, state = start_install(again)
        redirect = f"{again.url}/slack/oauth_redirect"
        code = slack.issue_install_code("T2", redirect)
        assert browser.get(redirect, {"code": code, "state": state}).status_code == 200
        browser.cookies["slack-app-oauth-state"] = state
        code = slack.issue_install_code("T2", redirect)
        assert browser.get(redirect, {"code": code, "state": state}).status_code == 401
    finally:
        again.stop()


def test_start_up_refuses_socket_mode_for_several_workspaces(
    slack: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "ledger.txt").touch()
    env = server_env(slack, model, tmp_path, free_port())
    out = refused_at_start({**env, "SLACK_APP_TOKEN": "xapp-1"})
    assert "SLACK_APP_TOKEN (Socket Mode) serves one workspace" in out


def test_the_acknowledgement_benchmark_runs_small() -> None:
    """tests/bench/slack_ack.py runs and prints its figures (not asserted)."""
    import subprocess
    import sys

    from .fakes import REPO

    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.slack_ack", "--requests", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert set(report["figures"]) == {"bot token", "OAuth, 2 workspaces"}
    assert all(f["p50_ms"] > 0 for f in report["figures"].values())


# -- streamed replies, in process -------------------------------------------------


@pytest.mark.anyio
async def test_streamed_replies_go_out_with_their_workspaces_token(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """A model that writes word by word: each workspace's reply streams into
    its own thread (chat.startStream/appendStream/stopStream) with its own
    token, to its own person (Slack's bare user id), and is the answer."""
    import asyncio
    import socket

    import uvicorn
    from fastapi import FastAPI
    from slack_sdk.oauth.installation_store import Installation

    from bot import ScriptedModel, ThreadBot, Toolbox
    from bot.model import say
    from channels.slack import SlackChannel, SlackSettings
    from store import EventStore
    from threadbot.config import Settings
    from threadbot.serve import build_slack_installations

    db = tmp_path / "t.db"
    settings = SlackSettings(
        client_id="client-1",
        client_secret="client-secret",
        signing_secret=SECRET,
        api_url=slack.api_url,
    )
    installations = build_slack_installations(Settings(db=str(db)), settings, {"SLACK_TEAMS": "*"})
    tokens = {}
    for team in ("T1", "T2"):
        tokens[team] = f"xoxb-{team}-stream"
        slack.workspaces[tokens[team]] = (team, "UBOT" + team)
        installations.bots.save(
            Installation(
                app_id="A1",
                team_id=team,
                bot_token=tokens[team],
                bot_id="B" + team,
                bot_user_id="UBOT" + team,
                user_id="UADMIN",
            )
        )
    model = ScriptedModel.of(say("Workspace one, streamed."), say("Workspace two, streamed."))
    bot = ThreadBot(EventStore(db), model, Toolbox(), retry_delay=0)
    channel = SlackChannel(bot, settings, installations)
    bot.add_channel("slack", channel)
    bot.run_in_thread()
    app = FastAPI()
    channel.mount(app)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for team in ("T1", "T2"):
            sender = TeamSender(url, team)
            r = await asyncio.to_thread(sender.event, mention("CLIVE", "status?", user="U7"))
            assert r.status_code == 200, r.text
            thread_id = bot.threads()[0].id
            # Done, and the answer delivered: the stream is stopped and its
            # message recorded after the thread's status turns done.
            async with asyncio.timeout(10):
                while True:
                    body = bot.get(thread_id).json()
                    if body["status"] == "done" and body["events"][-1]["type"] == "delivered":
                        break
                    await bot.settle(thread_id)
                    await asyncio.sleep(0.02)
        for team, said in (("T1", "Workspace one, streamed."), ("T2", "Workspace two, streamed.")):
            [start] = slack.calls_with(tokens[team], "chat.startStream")
            assert start.args["channel"] == "CLIVE"
            assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == (
                "U7",
                team,
            )
            ts = start.args["_ts"]
            streamed = [start.args.get("markdown_text") or ""] + [
                c.args.get("markdown_text") or ""
                for c in slack.calls_with(tokens[team])
                if c.method in ("chat.appendStream", "chat.stopStream") and c.args["ts"] == ts
            ]
            assert "".join(streamed) == said
            assert [c.args["ts"] for c in slack.calls_with(tokens[team], "chat.stopStream")] == [ts]
        # Each thread's answer is the streamed message, recorded with its workspace.
        for t in bot.threads():
            body = bot.get(t.id).json()
            delivered = body["events"][-1]
            team = body["events"][0]["source"]["refs"]["team"]
            [start] = slack.calls_with(tokens[team], "chat.startStream")
            assert delivered["refs"] == {"channel": "CLIVE", "ts": start.args["_ts"], "team": team}
    finally:
        server.should_exit = True
        await serving
        sock.close()
        await channel.stop()
        await channel.aclose()
        await bot.close()
        bot.store.close()
