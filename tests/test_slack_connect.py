"""Slack Connect: a channel of an installed workspace shared with other
workspaces. Who acted is known by their own workspace (`event.user_team`,
`user.team_id`), not by the workspace the request came through: a user of a
workspace that is not listed or not installed is no member (never an
approver, never someone of the people file, starts and settles nothing), and
nobody is taken for a person by an address an admin of some workspace gave
them. `threadbot serve` installed into two workspaces by OAuth, signed
requests through its real Bolt app, the local fake of Slack's Web API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import ModelReply, ScriptedModel, tool
from bot.model import ModelCall, say

from .fakes import FakeOpenAI, ServerProcess, calls, free_port, text
from .slack_fake import FakeSlack, SlackSender, signed_headers
from .test_slack_live import serving, settled
from .test_slack_oauth import (
    TeamSender,
    bots,
    install,
    mention,
    new_ts,
    newest_thread,
    posts,
    reply,
    server_env,
    thread,
    threads,
)

PEOPLE = """
[people.una]
name = "Una"
slack = "T1:U1"

[people.ana]
name = "Ana"
email = "ana@example.com"
"""

SHARED = "CSHARED"
"""A channel of workspace T1, shared with T2 (installed) and T9 (not listed)."""


class SharedSender(TeamSender):
    """Signed requests as Slack sends them to workspace `team`'s app about
    what someone of workspace `user_team` did in a channel shared with it."""

    def __init__(self, base_url: str, team: str, user_team: str) -> None:
        super().__init__(base_url, team)
        self.user_team = user_team

    def signed_event(
        self, event: dict[str, Any], *, event_id: str | None = None
    ) -> tuple[str, dict[str, str]]:
        event = {
            **event,
            "team": self.user_team,
            "user_team": self.user_team,
            "source_team": self.user_team,
            "user_profile": {"name": event.get("user", "").lower(), "team": self.user_team},
        }
        body, _ = super().signed_event(event, event_id=event_id)
        payload = json.loads(body)
        payload["is_ext_shared_channel"] = True
        body = json.dumps(payload)
        return body, {"Content-Type": "application/json", **signed_headers(body)}

    def interaction(self, payload: dict[str, Any]) -> httpx.Response:
        payload["team"] = {"id": self.team, "domain": self.team.lower()}
        payload["user"]["team_id"] = self.user_team
        return SlackSender.interaction(self, payload)


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        # An admin of workspace T2 gave one of its users Ana's address;
        # nobody in T1 has it.
        fake.directories["T2"] = {"UANA": ("Not Ana", "ana@example.com")}
        fake.directories["T1"] = {}
        yield fake


@pytest.fixture(scope="module")
def server(slack: FakeSlack, model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = server_env(slack, model, workdir, port)
    (workdir / "people.toml").write_text(PEOPLE)
    env["THREADBOT_APPROVERS"] = "una,ana"
    s = ServerProcess(env, port).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def installed(server: ServerProcess, slack: FakeSlack, workdir: Path) -> dict[str, str]:
    for team in ("T1", "T2"):
        assert install(server, slack, team).status_code == 200
    return bots(workdir / "threadbot.db")


@pytest.fixture(autouse=True)
def _script_empty(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def told(slack: FakeSlack, token: str, before: int) -> dict[str, Any]:
    """The next thing said privately with `token`, after `before` of them."""
    deadline = time.monotonic() + 10
    while len(found := slack.calls_with(token, "chat.postEphemeral")) <= before:
        assert time.monotonic() < deadline, "nothing was said privately"
        time.sleep(0.02)
    return found[before].args


def approval_in_shared_channel(
    server: ServerProcess, slack: FakeSlack, model: FakeOpenAI, token: str, version: str
) -> tuple[str, dict[str, Any]]:
    """A member of T1 asks for a deploy in the shared channel: the thread,
    and the approval request posted there."""
    known = {t["id"] for t in threads(server)}
    model.add(calls(("deploy", {"service": "api", "version": version})), text("Deployed."))
    ev = mention(SHARED, f"deploy api {version}", user="UASK")
    assert TeamSender(server.url, "T1").event(ev).status_code == 200
    thread_id = newest_thread(server, known)
    thread(server, thread_id, "waiting_for_approval")
    request = next(
        p
        for p in posts(slack, token, SHARED, 1)
        if p.get("thread_ts") == ev["ts"] and "Approval needed" in str(p.get("text"))
    )
    return thread_id, {"ts": request["_ts"], "blocks": request["blocks"]}


def test_someone_of_an_unlisted_workspace_with_an_approvers_id_cannot_approve(
    server: ServerProcess,
    slack: FakeSlack,
    model: FakeOpenAI,
    installed: dict[str, str],
    workdir: Path,
) -> None:
    """Una is U1 of workspace T1. U1 of workspace T9 (not listed) clicks
    Approve in the shared channel: Slack sends the click to T1's app, with
    `user.team_id` T9. They are T9:U1, nobody here: refused. Una's click
    approves."""
    t1 = installed["T1"]
    thread_id, request = approval_in_shared_channel(server, slack, model, t1, "11")
    before = len(slack.calls_with(t1, "chat.postEphemeral"))
    outsider = SharedSender(server.url, "T1", user_team="T9")
    assert outsider.click("U1", request, SHARED, "tb_approve").status_code == 200
    refusal = told(slack, t1, before)
    assert refusal["user"] == "U1" and "members of the workspaces" in refusal["text"]
    # Reject gets them no form either.
    opened = len(slack.called("views.open"))
    assert outsider.click("U1", request, SHARED, "tb_reject").status_code == 200
    assert "members of the workspaces" in told(slack, t1, before + 1)["text"]
    assert len(slack.called("views.open")) == opened
    assert thread(server, thread_id)["status"] == "waiting_for_approval"
    assert "deploy api 11" not in (workdir / "ledger.txt").read_text()
    # Slack was not asked who T9's U1 is: they are linked to nobody.
    assert not [c for c in slack.calls_with(t1, "users.info") if c.args["user"] == "U1"]

    # Una, U1 of T1, clicks the same button.
    assert (
        TeamSender(server.url, "T1").click("U1", request, SHARED, "tb_approve").status_code == 200
    )
    done = thread(server, thread_id, "done")
    approval = next(e for e in done["events"] if e["type"] == "approval")
    source = approval["source"]
    assert (source["user"], source["person"], source["member"]) == ("T1:U1", "una", True)
    assert "deploy api 11" in (workdir / "ledger.txt").read_text()


def test_an_address_given_in_another_workspace_makes_nobody_a_person(
    server: ServerProcess,
    slack: FakeSlack,
    model: FakeOpenAI,
    installed: dict[str, str],
    workdir: Path,
) -> None:
    """Ana is an approver known by her address only. UANA of workspace T2
    (listed and installed: a member) has that address in T2's directory, set
    by T2's admin. Installed into several workspaces, an address links a
    Slack user to nobody: UANA is T2:UANA, not Ana, and cannot approve. (With
    one workspace's token it still does: test_slack's approver listed by
    address.)"""
    t1 = installed["T1"]
    thread_id, request = approval_in_shared_channel(server, slack, model, t1, "12")
    before = len(slack.calls_with(t1, "chat.postEphemeral"))
    member = SharedSender(server.url, "T1", user_team="T2")
    assert member.click("UANA", request, SHARED, "tb_approve").status_code == 200
    refusal = told(slack, t1, before)
    assert refusal["user"] == "UANA" and "not one of the approvers" in refusal["text"]
    # Slack's directory was asked, in T2 (the user's own workspace) with T2's token.
    assert [c.args["user"] for c in slack.calls_with(installed["T2"], "users.info")] == ["UANA"]
    assert thread(server, thread_id)["status"] == "waiting_for_approval"
    assert "deploy api 12" not in (workdir / "ledger.txt").read_text()
    # Tidy up: Una approves.
    assert (
        TeamSender(server.url, "T1").click("U1", request, SHARED, "tb_approve").status_code == 200
    )
    thread(server, thread_id, "done")


def test_someone_of_an_unlisted_workspace_starts_nothing_and_writes_in_no_thread(
    server: ServerProcess, slack: FakeSlack, model: FakeOpenAI, installed: dict[str, str]
) -> None:
    """T9's U1 mentions threadbot in the shared channel: told privately, no
    thread. Their reply in a thread of T1's is refused too."""
    t1 = installed["T1"]
    outsider = SharedSender(server.url, "T1", user_team="T9")
    known = [t["id"] for t in threads(server)]
    before = len(slack.calls_with(t1, "chat.postEphemeral"))
    assert outsider.event(mention(SHARED, "deploy everything", user="U1")).status_code == 200
    said = told(slack, t1, before)
    assert said["user"] == "U1" and "members of the workspaces" in said["text"]
    assert [t["id"] for t in threads(server)] == known

    # A thread of a member of T1, waiting for an answer.
    model.add(text("Which environment?"))
    ev = mention(SHARED, "restart the cache", user="UASK")
    assert TeamSender(server.url, "T1").event(ev).status_code == 200
    thread_id = newest_thread(server, set(known))
    events = thread(server, thread_id, "done")["events"]
    before = len(slack.calls_with(t1, "chat.postEphemeral"))
    assert outsider.event(reply(SHARED, "production, all of it", ev["ts"])).status_code == 200
    refusal = told(slack, t1, before)
    assert refusal["user"] == "U1" and "members of the workspaces" in refusal["text"]
    assert len(thread(server, thread_id)["events"]) == len(events)


def test_someone_of_another_installed_workspace_is_known_by_their_own(
    server: ServerProcess, slack: FakeSlack, model: FakeOpenAI, installed: dict[str, str]
) -> None:
    """U1 of T2 (listed and installed) mentions threadbot in T1's shared
    channel: a thread in T1's channel, started by T2:U1 (not Una, T1:U1),
    and the reply streams to them in their own workspace."""
    known = {t["id"] for t in threads(server)}
    model.add(text("Hello from the shared channel."))
    ts = new_ts()
    guest = SharedSender(server.url, "T1", user_team="T2")
    assert guest.event(mention(SHARED, "hi", user="U1", ts=ts)).status_code == 200
    thread_id = newest_thread(server, known)
    body = thread(server, thread_id, "done")
    source = body["events"][0]["source"]
    assert (source["user"], source.get("person"), source["member"]) == ("T2:U1", None, True)
    assert source["refs"]["team"] == "T1"  # the conversation is T1's
    start = next(
        c.args
        for c in slack.calls_with(installed["T1"], "chat.startStream")
        if c.args["thread_ts"] == ts
    )
    assert (start["recipient_user_id"], start["recipient_team_id"]) == ("U1", "T2")


@tool(requires_approval=True, approvers=["U1"])
def purge(cache: str) -> str:
    """Purge a cache."""
    return f"purged {cache}"


@pytest.mark.anyio
async def test_with_one_workspaces_token_someone_of_another_is_no_member(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """With one workspace's (T1's) bot token, U1 of T9 in a shared channel
    is T9:U1, no member: their click on an approval U1 of T1 may give is
    refused; the click of T1's U1 approves."""
    model = ScriptedModel.of(
        ModelReply(calls=(ModelCall("call_1", "purge", json.dumps({"cache": "edge"})),)),
        say("Purged."),
    )
    async with serving(tmp_path / "t.db", slack, model, tools=[purge]) as s:
        ts = new_ts()
        await s.event(mention("C_TOKEN_SHARED", "purge the edge cache", user="UASK", ts=ts))
        await settled(s.bot, "waiting_for_approval")
        request = next(
            a
            for m, a in slack.live_calls("C_TOKEN_SHARED")
            if m == "chat.postMessage" and "Approval needed" in str(a.get("text"))
        )
        message = {"ts": request["_ts"], "blocks": request["blocks"]}
        before = len(slack.called("chat.postEphemeral"))
        base = s.sender.url.removesuffix("/slack/events")
        outsider = SharedSender(base, "T1", user_team="T9")
        r = await asyncio.to_thread(outsider.click, "U1", message, "C_TOKEN_SHARED", "tb_approve")
        assert r.status_code == 200
        refusal = (await asyncio.to_thread(slack.wait_for, "chat.postEphemeral", before + 1))[-1]
        assert refusal["user"] == "U1" and "members of the workspaces" in refusal["text"]
        # The same click with their workspace as the payload's `team`: the
        # token's workspace is T1 (auth.test), so T9 is still another one.
        theirs = SharedSender(base, "T9", user_team="T9")
        r = await asyncio.to_thread(theirs.click, "U1", message, "C_TOKEN_SHARED", "tb_approve")
        assert r.status_code == 200
        refusal = (await asyncio.to_thread(slack.wait_for, "chat.postEphemeral", before + 2))[-1]
        assert refusal["user"] == "U1" and "members of the workspaces" in refusal["text"]
        assert (await settled(s.bot))["status"] == "waiting_for_approval"

        await s.click("U1", message, "C_TOKEN_SHARED", "tb_approve")
        body = await settled(s.bot, "done")
        approval = next(e for e in body["events"] if e["type"] == "approval")
        assert (approval["source"]["user"], approval["source"]["member"]) == ("U1", True)


class GridSender(SlackSender):
    """Enterprise Grid: what a member of an organization whose own (home)
    workspace is `home` does in a channel of T1. Slack gives `user.team_id`
    as their home workspace (slackapi/bolt-js#1875)."""

    def __init__(self, base_url: str, home: str, enterprise: str) -> None:
        super().__init__(base_url)
        self.home = home
        self.enterprise = enterprise

    def interaction(self, payload: dict[str, Any]) -> httpx.Response:
        payload["user"]["team_id"] = self.home
        payload["enterprise"] = {"id": self.enterprise, "name": "org"}
        payload["is_enterprise_install"] = False
        return SlackSender.interaction(self, payload)


@tool(requires_approval=True, approvers=["W1", "W7"])
def flush(cache: str) -> str:
    """Flush a cache."""
    return f"flushed {cache}"


@pytest.mark.anyio
async def test_in_an_organization_its_member_with_another_home_workspace_is_one_of_ours(
    tmp_path: Path,
) -> None:
    """T1 belongs to the Enterprise Grid organization E1 (auth.test). W1,
    a member of E1 whose home workspace is T2, clicks Approve in T1's
    channel: Slack's directory says W1 is E1's, so W1 is one of ours, known
    by their bare id, and approves. W7 of another organization (E2), whose
    click says the same workspace and organization, is refused."""
    model = ScriptedModel.of(
        ModelReply(calls=(ModelCall("call_1", "flush", json.dumps({"cache": "edge"})),)),
        say("Flushed."),
    )
    with FakeSlack(enterprise="E1", grid={"W1": "E1", "W7": "E2"}).serve() as grid:
        async with serving(tmp_path / "t.db", grid, model, tools=[flush]) as s:
            await s.event(mention("C_GRID", "flush the edge cache", user="W9", ts=new_ts()))
            await settled(s.bot, "waiting_for_approval")
            request = next(
                a
                for m, a in grid.live_calls("C_GRID")
                if m == "chat.postMessage" and "Approval needed" in str(a.get("text"))
            )
            message = {"ts": request["_ts"], "blocks": request["blocks"]}
            base = s.sender.url.removesuffix("/slack/events")
            sender = GridSender(base, home="T2", enterprise="E1")
            r = await asyncio.to_thread(sender.click, "W7", message, "C_GRID", "tb_approve")
            assert r.status_code == 200
            refusal = (await asyncio.to_thread(grid.wait_for, "chat.postEphemeral", 1))[-1]
            assert refusal["user"] == "W7" and "members of the workspaces" in refusal["text"]
            assert (await settled(s.bot))["status"] == "waiting_for_approval"

            r = await asyncio.to_thread(sender.click, "W1", message, "C_GRID", "tb_approve")
            assert r.status_code == 200
            body = await settled(s.bot, "done")
            approval = next(e for e in body["events"] if e["type"] == "approval")
            assert (approval["source"]["user"], approval["source"]["member"]) == ("W1", True)
            assert len(grid.called("chat.postEphemeral")) == 1
            # Slack's directory was asked once about each (kept, not asked per click).
            asked = sorted(c["user"] for c in grid.called("users.info"))
            assert asked.count("W1") == 1 and asked.count("W7") == 1, asked


def shared_event(sender: SlackSender, event: dict[str, Any]) -> httpx.Response:
    """An event of a channel shared with other workspaces
    (`is_ext_shared_channel`) that says nothing of the writer's workspace."""
    body, _ = sender.signed_event(event)
    payload = json.loads(body)
    payload["is_ext_shared_channel"] = True
    body = json.dumps(payload)
    headers = {"Content-Type": "application/json", **signed_headers(body)}
    return httpx.post(sender.url, content=body, headers=headers, timeout=10)


@pytest.mark.anyio
async def test_in_a_shared_channel_a_writer_of_no_known_workspace_is_no_member(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """An event of a Slack Connect channel that names no workspace for its
    writer: they start nothing and are told so privately. (Outside shared
    channels, an event without one is of our workspace, as before.)"""
    model = ScriptedModel.of(say("Started for a known writer."))
    async with serving(tmp_path / "t.db", slack, model) as s:
        before = len(slack.called("chat.postEphemeral"))
        ev = {"type": "app_mention", "user": "U1", "text": "<@UBOT> deploy all", "ts": new_ts()}
        r = await asyncio.to_thread(shared_event, s.sender, {**ev, "channel": "C_EXT"})
        assert r.status_code == 200
        said = (await asyncio.to_thread(slack.wait_for, "chat.postEphemeral", before + 1))[-1]
        assert said["user"] == "U1" and "members of the workspaces" in said["text"]
        assert not s.bot.threads()

        await s.event({**ev, "ts": new_ts(), "channel": "C_NOT_SHARED"})
        assert (await settled(s.bot, "done"))["events"][0]["source"]["member"] is True


@pytest.mark.anyio
async def test_in_a_shared_channel_a_member_of_our_organization_of_no_known_workspace_is_ours(
    tmp_path: Path,
) -> None:
    """The same, in a workspace of an Enterprise Grid organization: a writer
    Slack's directory says is the organization's is one of ours."""
    model = ScriptedModel.of(say("Started for an organization's member."))
    with FakeSlack(enterprise="E1", grid={"W1": "E1", "W7": "E2"}).serve() as grid:
        async with serving(tmp_path / "t.db", grid, model) as s:
            ev = {"type": "app_mention", "text": "<@UBOT> hello", "channel": "C_EXT"}
            r = await asyncio.to_thread(
                shared_event, s.sender, {**ev, "user": "W7", "ts": new_ts()}
            )
            assert r.status_code == 200
            await asyncio.to_thread(grid.wait_for, "chat.postEphemeral", 1)
            assert not s.bot.threads()
            r = await asyncio.to_thread(
                shared_event, s.sender, {**ev, "user": "W1", "ts": new_ts()}
            )
            assert r.status_code == 200
            source = (await settled(s.bot, "done"))["events"][0]["source"]
            assert (source["user"], source["member"]) == ("W1", True)
