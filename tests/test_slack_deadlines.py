"""Slack and #15, end to end: reminders, escalations and deadlines in Slack;
approval requests of threads that started elsewhere as direct messages;
Reply instead and Cancel thread; several approval posts at once. Signed
requests through the real Bolt app inside `threadbot serve`, the local fake
Slack Web API, the real `openai` client against the fake model, and
tools with timers of a second or two (tests/slack_tools.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import REPO, FakeOpenAI, ServerProcess, calls, text
from .slack_fake import SECRET, FakeSlack, SlackSender
from .test_http import env_for
from .test_slack import finished, mention, posts

ADMIN = {"Authorization": "Bearer admin-secret"}
PEOPLE = """
[people.lee]
name = "Lee"
slack = "ULEE"

[people.sam]
name = "Sam"
slack = "USAM"

[people.pat]
name = "Pat"
slack = "UPAT"
slack_channel = "C_APPROVALS"

[people.kim]
name = "Kim"
email = "kim@example.com"
"""


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(slack: FakeSlack, model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    (workdir / "people.toml").write_text(PEOPLE)
    env = env_for(workdir / "threadbot.db", model, workdir / "ledger.txt")
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        THREADBOT_TOOLS=str(REPO / "tests" / "slack_tools.py"),
        THREADBOT_PEOPLE=str(workdir / "people.toml"),
        THREADBOT_API_TOKEN="admin-secret",
    )
    s = ServerProcess(env).start()
    yield s
    s.stop()


@pytest.fixture
def sender(server: ServerProcess) -> SlackSender:
    return SlackSender(server.url)


@pytest.fixture(autouse=True)
def _script_empty(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def msg(post: dict[str, Any]) -> dict[str, Any]:
    """A post as the click helper wants it."""
    return {"ts": post["_ts"], "blocks": post["blocks"]}


def buttons(post: dict[str, Any]) -> list[str]:
    return [
        el["action_id"] for b in post["blocks"] if b["type"] == "actions" for el in b["elements"]
    ]


def updated(slack: FakeSlack, ts: str, containing: str) -> dict[str, Any]:
    """The update of the post `ts` that says `containing` (waiting for it)."""
    deadline = time.monotonic() + 10
    while True:
        found = [u for u in slack.called("chat.update") if u["ts"] == ts]
        if found and containing in json.dumps(found[-1]["blocks"], ensure_ascii=False):
            assert not any(b["type"] == "actions" for b in found[-1]["blocks"])
            return found[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"{ts} never said {containing!r}: {found}")
        time.sleep(0.02)


def get(server: ServerProcess, thread_id: str, status: str | None = None) -> dict[str, Any]:
    """The thread, once it is `status` with everything delivered."""
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = httpx.get(server.url + f"/threads/{thread_id}", headers=ADMIN).json()
        if status is None or (
            body["status"] == status
            and body["events"][-1]["type"] in ("delivered", "assistant_message")
        ):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"thread {thread_id} is {body['status']}, not {status}")
        time.sleep(0.02)


def thread_id_of(post: dict[str, Any]) -> str:
    """The thread a request post belongs to, as its buttons say."""
    value = next(
        el["value"] for b in post["blocks"] if b["type"] == "actions" for el in b["elements"]
    )
    return str(json.loads(value)["t"])


def launch_over_http(server: ServerProcess, words: str) -> str:
    r = httpx.post(
        server.url + "/threads", json={"text": words, "user": "kim"}, headers=ADMIN, timeout=10
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def count(slack: FakeSlack, channel: str) -> int:
    """The messages the bot finished in `channel`: posted, or streamed."""
    return len(finished(slack, channel))


def test_reminder_and_escalation_reach_people_by_direct_message(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """A thread started over the HTTP API: Lee gets the request by DM, then
    a reminder by DM; after two seconds Sam is escalated to, gets it by DM
    with buttons, and approves from there. Every post loses its buttons."""
    model.add(calls(("restart", {"service": "api"})))
    thread_id = launch_over_http(server, "restart the api")
    first = posts(slack, "DULEE", 1)[0]
    assert {"users": "ULEE"}.items() <= slack.called("conversations.open")[0].items()
    assert buttons(first) == ["tb_approve", "tb_reject", "tb_respond", "tb_cancel"]
    said = json.dumps(first["blocks"])
    assert "From a thread Kim started through the API" in said and "`restart`" in said
    reminder = posts(slack, "DULEE", 2)[1]
    assert "Reminder" in json.dumps(reminder["blocks"]) and "tb_approve" in buttons(reminder)
    escalation = posts(slack, "DUSAM", 1)[0]
    assert "Escalated to you" in json.dumps(escalation["blocks"])
    assert "tb_approve" in buttons(escalation)
    body = get(server, thread_id, "waiting_for_approval")
    assert [e["type"] for e in body["events"]].count("escalated") == 1

    model.add(text("Restarted the api."))
    assert sender.click("USAM", msg(escalation), "DUSAM", "tb_approve").status_code == 200
    body = get(server, thread_id, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["source"]["user"]) == (True, "USAM")
    for post in (first, reminder, escalation):
        updated(slack, post["_ts"], "Approved by <@USAM>")
    time.sleep(0.5)
    assert (count(slack, "DULEE"), count(slack, "DUSAM")) == (2, 1)  # nothing twice


def test_reminder_and_escalation_in_the_slack_thread(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """A thread started in Slack: the request, the reminder and the
    escalation are posted in it, mentioning the people, and each approver
    also gets them by DM (they may not be in that channel): Lee the request
    and the reminder, Sam the escalation, with buttons, and approves there."""
    lee, sam = count(slack, "DULEE"), count(slack, "DUSAM")
    model.add(calls(("restart", {"service": "web"})))
    sender.event(mention("C_REM", "restart web"))
    request = posts(slack, "C_REM", 1)[0]
    assert "tb_approve" in buttons(request)
    dm = posts(slack, "DULEE", lee + 1)[-1]
    assert "tb_approve" in buttons(dm) and "From a thread" in json.dumps(dm["blocks"])
    reminder = posts(slack, "C_REM", 2)[1]
    assert "<@ULEE>" in reminder["text"] and "still waits for your decision" in reminder["text"]
    escalation = posts(slack, "C_REM", 3)[2]
    assert "Escalated to <@USAM>: they may decide too" in escalation["text"]
    assert all(p["thread_ts"] == request["thread_ts"] for p in (reminder, escalation))
    sam_dm = posts(slack, "DUSAM", sam + 1)[-1]
    assert "Escalated to you" in json.dumps(sam_dm["blocks"]) and "tb_approve" in buttons(sam_dm)
    model.add(text("Restarted web."))
    sender.click("USAM", msg(sam_dm), "DUSAM", "tb_approve")
    posts(slack, "C_REM", 4)
    for post in (request, dm, sam_dm):
        updated(slack, post["_ts"], "Approved by <@USAM>")
    time.sleep(0.3)
    # Nothing twice: the request, the reminder and the escalation posted,
    # and the answer streamed.
    assert count(slack, "C_REM") == 4
    assert finished(slack, "C_REM")[-1]["text"] == "Restarted web."
    assert len([p for p in slack.called("chat.postMessage") if p["channel"] == "C_REM"]) == 3
    assert (count(slack, "DULEE"), count(slack, "DUSAM")) == (lee + 2, sam + 1)


def test_a_deadline_rejects_and_the_post_says_so(
    server: ServerProcess, slack: FakeSlack, sender: SlackSender, model: FakeOpenAI
) -> None:
    model.add(calls(("purge", {"cache": "cdn"})))
    sender.event(mention("C_DEAD", "purge the cdn"))
    request = posts(slack, "C_DEAD", 1)[0]
    said = json.dumps(request["blocks"])
    assert "Decide by <!date^" in said and "then it is rejected" in said
    model.add(text("Nobody approved, so I did not purge."))
    update = updated(slack, request["_ts"], "Rejected: nobody approved by the deadline")
    assert "Rejected by" not in json.dumps(update["blocks"])
    posts(slack, "C_DEAD", 2)
    assert "nobody approved it by the deadline" in json.dumps(model.requests[-1]["messages"])


def test_a_thread_started_over_http_is_approved_in_slack(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """Lee gets a direct message; Pat's approvals go to the channel the
    people file names for them. Lee's click settles both posts."""
    model.add(calls(("deploy", {"service": "api", "version": "3"})))
    thread_id = launch_over_http(server, "deploy api 3")
    dm = posts(slack, "DULEE", count(slack, "DULEE") + 1)[-1]
    shared = posts(slack, "C_APPROVALS", 1)[0]
    assert "For <@UPAT>" in json.dumps(shared["blocks"]) and "tb_approve" in buttons(shared)
    assert "*version:* `3`" in json.dumps(dm["blocks"])
    body = get(server, thread_id, "waiting_for_approval")
    delivered = [e for e in body["events"] if e["type"] == "delivered"]
    assert {"DULEE/" + dm["_ts"], "C_APPROVALS/" + shared["_ts"]} == set(
        delivered[0]["refs"]["posts"].split()
    )
    model.add(text("Deployed api 3."))
    sender.click("ULEE", msg(dm), "DULEE", "tb_approve")
    body = get(server, thread_id, "done")
    assert body["events"][-1]["text"] == "Deployed api 3."
    for post in (dm, shared):
        updated(slack, post["_ts"], "Approved by <@ULEE>")


def test_reply_instead(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(calls(("deploy", {"service": "db", "version": "9"})))
    sender.event(mention("C_RESP", "deploy db 9"))
    request = posts(slack, "C_RESP", 1)[0]
    thread_id = thread_id_of(request)
    before = get(server, thread_id, "waiting_for_approval")
    opened = len(slack.called("views.open"))
    ephemeral = len(slack.called("chat.postEphemeral"))
    # Someone who may not decide gets no form.
    sender.click("UNOBODY", msg(request), "C_RESP", "tb_respond")
    refusal = slack.wait_for("chat.postEphemeral", ephemeral + 1)[-1]
    assert refusal["user"] == "UNOBODY" and "may not" in refusal["text"]
    sender.click("ULEE", msg(request), "C_RESP", "tb_respond")
    view = slack.wait_for("views.open", opened + 1)[-1]
    assert len(slack.called("views.open")) == opened + 1
    assert (view["trigger_id"], view["view"]["callback_id"]) == ("trigger-ULEE", "tb_respond_modal")
    # The same form submitted by someone else is refused and writes nothing.
    r = sender.submit_form("UNOBODY", view["view"], "ship it to prod now")
    assert r.status_code == 200 and r.json()["response_action"] == "errors"
    assert len(get(server, thread_id)["events"]) == len(before["events"])
    model.add(text("OK: staging first."))
    r = sender.submit_form("ULEE", view["view"], "use the staging cluster first")
    assert r.status_code == 200 and not r.content.strip(b"{} "), r.text
    body = get(server, thread_id, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["responded"]) == (False, True)
    assert approval["comment"] == "use the staging cluster first"
    assert "use the staging cluster first" in json.dumps(model.requests[-1]["messages"])
    updated(slack, request["_ts"], "<@ULEE> replied instead: use the staging cluster first")


def test_cancel_thread_button(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(calls(("drop_table", {"table": "users"})))
    sender.event(mention("C_CAN", "drop the users table"))
    request = posts(slack, "C_CAN", 1)[0]
    said = json.dumps(request["blocks"])
    assert "Needs 2 approvals." in said and "Decide by <!date^" in said
    cancel = next(
        el
        for b in request["blocks"]
        if b["type"] == "actions"
        for el in b["elements"]
        if el["action_id"] == "tb_cancel"
    )
    assert cancel["style"] == "danger" and cancel["confirm"]["confirm"]["text"] == "Cancel thread"
    thread_id = thread_id_of(request)
    before = get(server, thread_id, "waiting_for_approval")
    ephemeral = len(slack.called("chat.postEphemeral"))
    sender.click("UNOBODY", msg(request), "C_CAN", "tb_cancel")
    refusal = slack.wait_for("chat.postEphemeral", ephemeral + 1)[-1]
    assert refusal["user"] == "UNOBODY" and "may not" in refusal["text"]
    assert len(get(server, thread_id)["events"]) == len(before["events"])
    sender.click("ULEE", msg(request), "C_CAN", "tb_approve")  # one of the two
    sender.click("U1", msg(request), "C_CAN", "tb_cancel")  # the starter
    closing = posts(slack, "C_CAN", 2)[1]
    assert closing["text"] == "⏹ Cancelled by <@U1>"
    body = get(server, thread_id, "cancelled")
    assert body["events"][-2]["type"] == "cancelled"
    updated(slack, request["_ts"], "Cancelled by <@U1>")
    ephemeral = len(slack.called("chat.postEphemeral"))
    sender.click("U1", msg(request), "C_CAN", "tb_cancel")  # again: it has ended
    assert "nothing to cancel" in slack.wait_for("chat.postEphemeral", ephemeral + 1)[-1]["text"]


def test_two_approval_posts_answered_in_reverse_order(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(
        calls(
            ("deploy", {"service": "api", "version": "1"}),
            ("deploy", {"service": "web", "version": "2"}),
        )
    )
    sender.event(mention("C_PAR", "deploy api 1 and web 2"))
    first, second = posts(slack, "C_PAR", 2)
    assert "`api`" in json.dumps(first["blocks"]) and "`web`" in json.dumps(second["blocks"])
    sender.click("ULEE", msg(second), "C_PAR", "tb_approve")
    updated(slack, second["_ts"], "Approved by <@ULEE>")
    thread_id = thread_id_of(first)
    deadline = time.monotonic() + 10
    while "tool_result" not in [e["type"] for e in get(server, thread_id)["events"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert get(server, thread_id)["status"] == "waiting_for_approval"  # the first still waits
    model.add(text("Deployed both."))
    sender.click("UPAT", msg(first), "C_PAR", "tb_approve")
    updated(slack, first["_ts"], "Approved by <@UPAT>")
    posts(slack, "C_PAR", 3)
    body = get(server, thread_id, "done")
    results = [e["output"] for e in body["events"] if e["type"] == "tool_result"]
    assert sorted(results) == ["deployed api 1", "deployed web 2"]


@pytest.mark.anyio
async def test_a_direct_message_is_not_posted_twice_after_a_crash(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """A request delivered again as not fresh (the process may have died
    between the post and its record) finds its direct message and posts nothing."""
    from bot import People, Person, ScriptedModel, Source, ThreadBot, load_tools
    from bot.model import call
    from channels.slack import SlackChannel, SlackSettings
    from store import EventStore

    people = People([Person("lee", "Lee", slack="ULEE_X")])
    bot = ThreadBot(
        EventStore(tmp_path / "t.db"),
        ScriptedModel.of(call("deploy", service="api", version="4")),
        load_tools(str(Path(__file__).parent / "slack_tools.py")),
        people=people,
    )
    channel = SlackChannel(bot, SlackSettings(bot_token="xoxb-test", api_url=slack.api_url))
    bot.add_channel("slack", channel)
    kim = Source(channel="http", user="kim", auth="admin-token", by="admin token")
    thread_id = await bot.launch("deploy api 4", source=kim)
    await bot.runner.settle(thread_id)
    sent = posts(slack, "DULEE_X", 1)
    view = bot.get(thread_id)
    call_id = view.state.pending.call_id if view.state.pending else ""
    notice = bot.request(thread_id, call_id, "slack")
    assert notice is not None and notice.reach and notice.delivered
    again = await channel.deliver(replace(notice, fresh=False))
    assert again.refs["ts"] == sent[0]["_ts"] == notice.delivered["ts"]
    assert count(slack, "DULEE_X") == 1
    await channel.stop()
    await bot.close()
    bot.store.close()
