"""Slack, end to end: signed requests through the real Bolt app inside
`threadbot serve`, a local fake of the Slack Web API, and the real `openai`
client talking to a local fake model."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, ask, calls, text
from .slack_fake import BOT_USER, SECRET, FakeSlack, SlackSender, signed_headers
from .test_http import env_for

_ts = itertools.count(1)


def new_ts() -> str:
    return f"1800000{next(_ts):03d}.000200"


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(slack: FakeSlack, model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    env = env_for(workdir / "threadbot.db", model, workdir / "ledger.txt")
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        THREADBOT_SLACK_APPROVERS="ULEAD,UOPS",
    )
    s = ServerProcess(env).start()
    yield s
    s.stop()


@pytest.fixture
def sender(server: ServerProcess) -> SlackSender:
    return SlackSender(server.url)


@pytest.fixture(scope="module")
def whole_server(
    slack: FakeSlack, model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server of its own for the tests of answers posted whole: it
    remembers that Slack refused to stream, and so keeps posting whole."""
    yield from _server_of_its_own(slack, model, tmp_path_factory, "slack-whole")


def _server_of_its_own(
    slack: FakeSlack, model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[ServerProcess]:
    """A Slack server with its own database and ledger, until the module ends."""
    d = tmp_path_factory.mktemp(name)
    env = env_for(d / "threadbot.db", model, d / "ledger.txt")
    env.update(
        SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET, SLACK_API_URL=slack.api_url
    )
    s = ServerProcess(env).start()
    yield s
    s.stop()


@pytest.fixture
def whole(whole_server: ServerProcess, slack: FakeSlack) -> Iterator[SlackSender]:
    """Events to `whole_server`, in a workspace where Slack refuses to
    stream (`refuse_streaming`): answers are posted whole, as before."""
    slack.refuse_streaming = "not_allowed"
    try:
        yield SlackSender(whole_server.url)
    finally:
        slack.refuse_streaming = None


@pytest.fixture(autouse=True)
def _script_empty(model: FakeOpenAI) -> Iterator[None]:
    yield
    assert not model.script, "the test left model replies unused"


def finished(slack: FakeSlack, channel: str) -> list[dict[str, Any]]:
    """The messages the bot finished in `channel` so far, in order: posted
    whole, or streamed and stopped (the model streams, and so do answers
    where Slack allows it)."""
    posted = [p for p in slack.called("chat.postMessage") if p["channel"] == channel]
    with slack.lock:
        streamed = [
            {"channel": channel, "thread_ts": s["thread_ts"], "text": s["text"], "_ts": ts}
            for ts, s in slack.streams.items()
            if s["channel"] == channel and not s["streaming"]
        ]
    return sorted(posted + streamed, key=lambda p: float(p["_ts"]))


def posts(slack: FakeSlack, channel: str, count: int) -> list[dict[str, Any]]:
    """The messages the bot finished in `channel`, once there are `count`."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(found) < count:
        found = finished(slack, channel)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} posts in {channel}, wanted {count}")
        time.sleep(0.02)
    return found


def mention(channel: str, text_: str, user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "app_mention",
        "user": user,
        "text": f"<@{BOT_USER}> {text_}",
        "ts": extra.pop("ts", new_ts()),
        "channel": channel,
        **extra,
    }


def message(channel: str, text_: str, user: str = "U1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "user": user,
        "text": text_,
        "ts": extra.pop("ts", new_ts()),
        "channel": channel,
        "channel_type": extra.pop("channel_type", "channel"),
        **extra,
    }


def thread_of(
    server: ServerProcess, status: str | None = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The newest thread (optionally once it is `status` and what it posted
    is recorded as delivered: the post reaches Slack a moment before)."""
    deadline = time.monotonic() + 10
    while True:
        listed = httpx.get(server.url + "/threads", headers=headers).json()
        if listed:
            body: dict[str, Any] = httpx.get(
                server.url + f"/threads/{listed[0]['id']}", headers=headers
            ).json()
            if status is None or (
                body["status"] == status and body["events"][-1]["type"] == "delivered"
            ):
                return body
        if time.monotonic() > deadline:
            raise AssertionError(f"no thread reached {status}")
        time.sleep(0.02)


def test_mention_question_reply_answer(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"), text("Deployed **1.4.2**."))
    ev = mention("C_Q", "deploy the api")
    r = sender.event(ev)
    assert r.status_code == 200
    question = posts(slack, "C_Q", 1)[0]
    assert question["thread_ts"] == ev["ts"]  # in the Slack thread of the mention
    assert "Which version?" in question["blocks"][0]["text"]["text"]
    assert model.requests[-1]["messages"][-1] == {"role": "user", "content": "deploy the api"}
    # The user sees the agent working on their message.
    assert {"channel": "C_Q", "timestamp": ev["ts"], "name": "eyes"} in [
        {k: c[k] for k in ("channel", "timestamp", "name")} for c in slack.called("reactions.add")
    ]

    reply = message("C_Q", "1.4.2", thread_ts=ev["ts"])
    assert sender.event(reply).status_code == 200
    answer = posts(slack, "C_Q", 2)[1]
    assert answer["thread_ts"] == ev["ts"]
    # The answer streamed into the thread as Markdown (Slack renders it).
    assert answer["text"] == "Deployed **1.4.2**."
    body = thread_of(server, "done")
    assert [e["type"] for e in body["events"]] == [
        "user_message",
        "tool_call",
        "delivered",
        "human_response",
        "delivered",  # the question's post now shows the answer
        "assistant_message",
        "delivered",
    ]
    assert body["events"][3]["source"]["user"] == "U1"
    assert body["events"][4]["of_seq"] == 3
    # Answered by a reply in the thread: the question's post says so.
    update = slack.called("chat.update")[-1]
    assert update["ts"] == body["events"][2]["refs"]["ts"]
    assert "answered: 1.4.2" in update["text"] and "<@U1>" in update["text"]


def test_dm_launches_and_options_are_buttons(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(ask("Which environment?", ["staging", "production"]), text("Staging it is."))
    ev = message("D_OPT", "deploy web", channel_type="im")
    sender.event(ev)
    question = posts(slack, "D_OPT", 1)[0]
    actions = next(b for b in question["blocks"] if b["type"] == "actions")
    assert [e["text"]["text"] for e in actions["elements"]] == ["staging", "production"]
    thread = thread_of(server, "waiting_for_human")
    delivered = thread["events"][2]
    msg = {"ts": delivered["refs"]["ts"], "blocks": question["blocks"]}
    r = sender.click("U1", msg, "D_OPT", "tb_option_0")
    assert r.status_code == 200
    posts(slack, "D_OPT", 2)
    body = thread_of(server, "done")
    answer = next(e for e in body["events"] if e["type"] == "human_response")
    assert (answer["text"], answer["option"]) == ("staging", "staging")
    # The question lost its buttons and shows who answered.
    update = slack.wait_for("chat.update")[-1]
    assert update["ts"] == msg["ts"]
    assert not any(b["type"] == "actions" for b in update["blocks"])
    assert "<@U1> answered: staging" in json.dumps(update["blocks"])


def approval_thread(
    server: ServerProcess,
    sender: SlackSender,
    slack: FakeSlack,
    model: FakeOpenAI,
    channel: str,
    *,
    user: str = "U1",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    model.add(calls(("deploy", {"service": "api", "version": "2"})))
    sender.event(mention(channel, "deploy api 2", user=user))
    post = posts(slack, channel, 1)[0]
    assert "Approval needed" in post["blocks"][0]["text"]["text"]
    assert "*version:* `2`" in post["blocks"][0]["text"]["text"]
    # An approver Slack knows only by address may be mailed the request too:
    # the Slack post's record may come after the mail's.
    deadline = time.monotonic() + 10
    while True:
        thread = thread_of(server, "waiting_for_approval", headers)
        on_slack = [
            e for e in thread["events"] if e["type"] == "delivered" and e["channel"] == "slack"
        ]
        if on_slack or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return {"ts": on_slack[0]["refs"]["ts"], "blocks": post["blocks"], "thread": thread}


def test_approve_by_an_approver(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI, workdir: Path
) -> None:
    msg = approval_thread(server, sender, slack, model, "C_APP")
    assert "<@ULEAD>" in json.dumps(msg["blocks"])  # says who may decide
    model.add(text("Deployed api 2."))
    assert sender.click("ULEAD", msg, "C_APP", "tb_approve").status_code == 200
    posts(slack, "C_APP", 2)
    body = thread_of(server, "done")
    assert "deploy api 2" in (workdir / "ledger.txt").read_text()
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["source"]["user"]) == (True, "ULEAD")
    update = [u for u in slack.called("chat.update") if u["ts"] == msg["ts"]][-1]
    assert "Approved by <@ULEAD>" in json.dumps(update["blocks"])
    assert not any(b["type"] == "actions" for b in update["blocks"])


def test_unauthorized_click_then_double_click(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI, workdir: Path
) -> None:
    msg = approval_thread(server, sender, slack, model, "C_DBL")
    before = len(msg["thread"]["events"])
    sender.click("UNOBODY", msg, "C_DBL", "tb_approve")
    refusal = slack.wait_for("chat.postEphemeral")[-1]
    assert refusal["user"] == "UNOBODY"
    assert "may not" in refusal["text"]
    assert len(thread_of(server)["events"]) == before  # nothing written

    model.add(text("Done."))
    sender.click("UOPS", msg, "C_DBL", "tb_approve")
    thread_of(server, "done")
    n = len(slack.called("chat.postEphemeral"))
    sender.click("ULEAD", msg, "C_DBL", "tb_approve")  # too late
    late = slack.wait_for("chat.postEphemeral", n + 1)[-1]
    assert late["user"] == "ULEAD"
    assert "Already settled by <@UOPS>" in late["text"]
    body = thread_of(server, "done")
    assert [e["type"] for e in body["events"]].count("approval") == 1
    assert (workdir / "ledger.txt").read_text().count(
        "deploy api 2"
    ) == 2  # this test's and the last


def test_reject_asks_for_a_reason(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    msg = approval_thread(server, sender, slack, model, "C_REJ")
    opened = len(slack.called("views.open"))
    sender.click("ULEAD", msg, "C_REJ", "tb_reject")
    view = slack.wait_for("views.open", opened + 1)[-1]
    assert view["trigger_id"] == "trigger-ULEAD"
    model.add(text("OK, not deploying."))
    r = sender.submit_reject("ULEAD", view["view"], "the release is frozen")
    assert r.status_code == 200, server.output()
    posts(slack, "C_REJ", 2)
    body = thread_of(server, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["comment"]) == (False, "the release is frozen")
    assert "the release is frozen" in model.requests[-1]["messages"][-1]["content"]
    update = [u for u in slack.called("chat.update") if u["ts"] == msg["ts"]][-1]
    assert "Rejected by <@ULEAD>: the release is frozen" in json.dumps(update["blocks"])


def test_reject_by_someone_else_opens_no_modal(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    msg = approval_thread(server, sender, slack, model, "C_REJ2")
    opened = len(slack.called("views.open"))
    n = len(slack.called("chat.postEphemeral"))
    sender.click("UNOBODY", msg, "C_REJ2", "tb_reject")
    assert "may not" in slack.wait_for("chat.postEphemeral", n + 1)[-1]["text"]
    assert len(slack.called("views.open")) == opened
    # Tidy up: the thread is decided over HTTP, and its buttons go away.
    model.add(text("Not deployed."))
    thread_id = msg["thread"]["id"]
    httpx.post(
        server.url + f"/threads/{thread_id}/approvals", json={"approved": False, "comment": "no"}
    )
    posts(slack, "C_REJ2", 2)
    update = [u for u in slack.called("chat.update") if u["ts"] == msg["ts"]][-1]
    assert not any(b["type"] == "actions" for b in update["blocks"])


def test_retries_and_duplicates_land_once(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(ask("Which version?"), text("ok"))
    ev = mention("C_DUP", "deploy")
    sender.event(ev, event_id="EvDUP1")
    sender.event(ev, event_id="EvDUP1", retry=1)  # Slack's retry
    # The same post also arrives as a `message` event, with its own event id.
    sender.event(message("C_DUP", f"<@{BOT_USER}> deploy", ts=ev["ts"]))
    posts(slack, "C_DUP", 1)
    reply = message("C_DUP", "1.0", thread_ts=ev["ts"])
    sender.event(reply)
    sender.event(reply, retry=1)
    sender.event({**reply, "type": "app_mention"})
    posts(slack, "C_DUP", 2)
    time.sleep(0.3)
    body = thread_of(server, "done")
    types = [e["type"] for e in body["events"]]
    assert types.count("user_message") == 1 and types.count("human_response") == 1
    # Nothing twice: the question posted once, the answer streamed once.
    assert [p["text"] for p in finished(slack, "C_DUP")] == ["Which version?", "ok"]
    assert len([p for p in slack.called("chat.postMessage") if p["channel"] == "C_DUP"]) == 1
    assert len([a for a in slack.called("chat.startStream") if a["channel"] == "C_DUP"]) == 1
    # One thread per conversation it started in (approvers' DMs aside).
    started = [t for t in httpx.get(server.url + "/threads").json() if t["origin"] == "slack"]
    dms = {f"D{u}" for u in ("ULEAD", "UOPS")}  # the approvers' own (tests/slack_fake.py)
    wrote = {
        p["channel"] for m in ("chat.postMessage", "chat.startStream") for p in slack.called(m)
    }
    assert len(started) == len(wrote - dms)


def test_bad_signature_is_refused(server: ServerProcess, slack: FakeSlack) -> None:
    body = json.dumps({"type": "event_callback", "event": mention("C_SIG", "deploy")})
    before = httpx.get(server.url + "/threads").json()
    forged = signed_headers(body, secret="not-the-secret")
    r = httpx.post(server.url + "/slack/events", content=body, headers=forged)
    assert r.status_code == 401
    stale = signed_headers(body, at=int(time.time()) - 3600)
    r = httpx.post(server.url + "/slack/events", content=body, headers=stale)
    assert r.status_code == 401
    r = httpx.post(server.url + "/slack/events", content=body)
    assert r.status_code == 401
    assert httpx.get(server.url + "/threads").json() == before


def test_own_bot_and_edited_messages_are_ignored(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack
) -> None:
    before = httpx.get(server.url + "/threads").json()
    sender.event(message("D_IGN", "I am the bot", user=BOT_USER, channel_type="im", bot_id="BBOT"))
    sender.event(message("D_IGN", "another bot", user="UOTHERBOT", channel_type="im", bot_id="B2"))
    sender.event(message("D_IGN", "edited", channel_type="im", subtype="message_changed"))
    sender.event(message("D_IGN", "", channel_type="im", subtype="message_deleted"))
    sender.event(message("C_IGN", "talk among ourselves"))  # no mention, no bound thread
    time.sleep(0.5)
    assert httpx.get(server.url + "/threads").json() == before
    assert not [p for p in slack.called("chat.postMessage") if p["channel"] in ("D_IGN", "C_IGN")]


PARAGRAPHS = [f"Paragraph {i}: " + "word " * 150 for i in range(60)]  # ~45,000 chars


def assert_split(parts: list[dict[str, Any]]) -> None:
    """The parts of a long answer fit Slack's limits and say it all, once."""
    sections = [b["text"]["text"] for p in parts for b in p["blocks"]]
    assert all(len(s) <= 3000 for s in sections)
    assert all(len(p["blocks"]) <= 50 for p in parts)
    joined = " ".join(sections)
    assert all(joined.count(f"Paragraph {i}:") == 1 for i in range(60))
    assert [p["metadata"]["event_payload"]["part"] for p in parts] == list(range(len(parts)))


def test_long_answer_is_split(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """While the model writes, the answer's beginning streams into one
    message, within Slack's 12,000 characters of markdown_text (per call,
    and in all); once delivered, that message says the answer's first part
    and the rest is posted under it."""
    answer = "\n\n".join(PARAGRAPHS)
    model.add(text(answer))
    ev = mention("C_LONG", "explain everything")
    sender.event(ev)
    body = thread_of(server, "done")
    time.sleep(0.3)
    calls = slack.live_calls("C_LONG")
    streaming = [a for m, a in calls if m in ("chat.startStream", "chat.appendStream")]
    assert all(len(a.get("markdown_text") or "") <= 12_000 for a in streaming)
    (ts,) = [a["_ts"] for m, a in calls if m == "chat.startStream"]
    shown = slack.streams[ts]
    assert not shown["streaming"] and 0 < len(shown["text"]) <= 12_000
    assert answer.startswith(shown["text"])  # its beginning, no hole in it
    (update,) = [a for m, a in calls if m == "chat.update" and a["ts"] == ts]
    rest = [a for m, a in calls if m == "chat.postMessage"]
    assert rest and all(p["thread_ts"] == ev["ts"] for p in rest)
    assert_split([update, *rest])
    assert body["events"][-1]["refs"]["ts"] == ts


def test_long_answer_posted_whole_is_split(
    whole_server: ServerProcess, whole: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """Where Slack does not stream (refuse_streaming), a long answer is
    posted whole, in as many messages as it needs."""
    model.add(text("\n\n".join(PARAGRAPHS)))
    whole.event(mention("C_LONGW", "explain everything"))
    thread_of(whole_server, "done")
    time.sleep(0.3)
    sent = [p for p in slack.called("chat.postMessage") if p["channel"] == "C_LONGW"]
    assert len(sent) >= 2
    assert_split(sent)
    assert not [s for s in slack.streams.values() if s["channel"] == "C_LONGW"]


def test_rate_limited_stream_is_retried(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """Slack answers 429 to starting the stream, to appending to it and to
    stopping it: each call is made again after Retry-After, and the answer
    arrives whole, once."""
    for method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
        slack.fail[method] = [429]
    model.add(text("hello, the **api** is up"))
    t0 = time.monotonic()
    sender.event(mention("C_429", "hi"))
    answer = posts(slack, "C_429", 1)[0]
    assert time.monotonic() - t0 >= 3.0  # waited for Retry-After: 1, three times
    assert not any(slack.fail.values())  # each 429 was answered
    assert answer["text"] == "hello, the **api** is up"
    time.sleep(0.3)
    assert len(finished(slack, "C_429")) == 1
    assert not [p for p in slack.called("chat.postMessage") if p["channel"] == "C_429"]


def test_rate_limited_post_is_retried(
    whole_server: ServerProcess, whole: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """Where Slack does not stream (refuse_streaming), the answer is posted
    whole, its Markdown as mrkdwn: a 429 on the post is retried."""
    slack.fail["chat.postMessage"] = [429]
    model.add(text("hello, the **api** is up"))
    t0 = time.monotonic()
    whole.event(mention("C_429W", "hi"))
    post = posts(slack, "C_429W", 1)[0]
    assert time.monotonic() - t0 >= 1.0  # waited for Retry-After: 1
    assert slack.fail["chat.postMessage"] == []
    assert post["blocks"][0]["text"]["text"] == "hello, the *api* is up"  # Markdown → mrkdwn
    time.sleep(0.3)
    assert len(finished(slack, "C_429W")) == 1


def test_a_reply_after_the_answer_continues_and_strangers_cannot_answer(
    server: ServerProcess, sender: SlackSender, slack: FakeSlack, model: FakeOpenAI
) -> None:
    model.add(text("The api is healthy."), ask("Which service?"), text("web is fine too."))
    ev = mention("C_CONT", "how is the api?")
    sender.event(ev)
    posts(slack, "C_CONT", 1)
    thread_id = thread_of(server, "done")["id"]
    sender.event(message("C_CONT", "and the others?", thread_ts=ev["ts"]))
    posts(slack, "C_CONT", 2)
    body = thread_of(server, "waiting_for_human")
    assert body["id"] == thread_id  # the same agent thread
    n = len(slack.called("chat.postEphemeral"))
    sender.event(message("C_CONT", "it's the db!", user="USTRANGER", thread_ts=ev["ts"]))
    refusal = slack.wait_for("chat.postEphemeral", n + 1)[-1]
    assert refusal["user"] == "USTRANGER" and "may not" in refusal["text"]
    assert len(thread_of(server)["events"]) == len(body["events"])
    sender.event(message("C_CONT", "web", thread_ts=ev["ts"]))
    posts(slack, "C_CONT", 3)
    assert thread_of(server, "done")["events"][-2]["text"] == "web is fine too."


# -- people from Slack's directory ----------------------------------------------

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture(scope="module")
def lead_server(
    slack: FakeSlack, model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Approvers listed by address only, as THREADBOT_APPROVERS; Slack's
    directory knows who has which address."""
    slack.users.update(
        {"ULEAD": ("Lee Lead", "lead@example.com"), "UANN": ("Ann Other", "ann@example.com")}
    )
    d = tmp_path_factory.mktemp("slack-lead")
    env = env_for(d / "threadbot.db", model, d / "ledger.txt")
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        THREADBOT_APPROVERS="lead@example.com",
        THREADBOT_API_TOKEN="admin-secret",
    )
    s = ServerProcess(env).start()
    yield s
    s.stop()


def update_of(slack: FakeSlack, ts: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not (found := [u for u in slack.called("chat.update") if u["ts"] == ts]):
        if time.monotonic() > deadline:
            raise AssertionError(f"the message {ts} was never updated")
        time.sleep(0.02)
    return found[-1]


def test_an_approver_listed_by_address_approves_with_a_button(
    lead_server: ServerProcess, slack: FakeSlack, model: FakeOpenAI
) -> None:
    sender = SlackSender(lead_server.url)
    msg = approval_thread(lead_server, sender, slack, model, "C_BYMAIL", headers=ADMIN)
    # The request mentions the approver, found by their address.
    assert "Approvers: <@ULEAD>" in json.dumps(msg["blocks"])
    assert {"email": "lead@example.com"}.items() <= slack.called("users.lookupByEmail")[-1].items()
    model.add(text("Deployed api 2."))
    assert sender.click("ULEAD", msg, "C_BYMAIL", "tb_approve").status_code == 200
    body = thread_of(lead_server, "done", ADMIN)
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert approval["approved"] is True
    source = approval["source"]
    assert (source["user"], source["auth"], source["name"]) == ("ULEAD", "slack", "Lee Lead")
    assert "Approved by <@ULEAD>" in json.dumps(update_of(slack, msg["ts"])["blocks"])


def test_a_slack_user_not_among_the_approvers_is_refused_privately(
    lead_server: ServerProcess, slack: FakeSlack, model: FakeOpenAI
) -> None:
    sender = SlackSender(lead_server.url)
    msg = approval_thread(lead_server, sender, slack, model, "C_NOTAPP", headers=ADMIN)
    before = len(msg["thread"]["events"])
    n = len(slack.called("chat.postEphemeral"))
    # Ann is in Slack's directory, with an address, but not an approver;
    # nor is the person who asked.
    for user in ("UANN", "U1"):
        sender.click(user, msg, "C_NOTAPP", "tb_approve")
        n += 1
        refusal = slack.wait_for("chat.postEphemeral", n)[-1]
        assert refusal["user"] == user and "may not" in refusal["text"]
    body = thread_of(lead_server, None, ADMIN)
    assert (body["status"], len(body["events"])) == ("waiting_for_approval", before)
    assert not [u for u in slack.called("chat.update") if u["ts"] == msg["ts"]]
    # Tidy up: the approver decides.
    model.add(text("Not deployed."))
    opened = len(slack.called("views.open"))
    sender.click("ULEAD", msg, "C_NOTAPP", "tb_reject")
    view = slack.wait_for("views.open", opened + 1)[-1]
    sender.submit_reject("ULEAD", view["view"], "not now")
    thread_of(lead_server, "done", ADMIN)


def test_an_api_decision_shows_in_slack_who_and_how(
    lead_server: ServerProcess, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """An admin token naming ULEAD is not ULEAD's click: the message says so."""
    sender = SlackSender(lead_server.url)
    msg = approval_thread(lead_server, sender, slack, model, "C_VIAAPI", headers=ADMIN)
    model.add(text("Deployed."))
    r = httpx.post(
        lead_server.url + f"/threads/{msg['thread']['id']}/approvals",
        json={"approved": True, "user": "ULEAD"},
        headers=ADMIN,
    )
    assert r.status_code == 202, r.text
    posts(slack, "C_VIAAPI", 2)
    update = json.dumps(update_of(slack, msg["ts"])["blocks"])
    assert "through the API" in update and "(by admin token for them)" in update
    assert "Approved by <@ULEAD>" not in update
    assert not any(b["type"] == "actions" for b in update_of(slack, msg["ts"])["blocks"])


@pytest.fixture(scope="module")
def open_server(
    slack: FakeSlack, model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Nobody named as an approver."""
    yield from _server_of_its_own(slack, model, tmp_path_factory, "slack-open")


def test_with_no_approvers_the_starter_decides(
    open_server: ServerProcess, slack: FakeSlack, model: FakeOpenAI
) -> None:
    """Every signed Slack user is a member of the workspace: known, so the
    person who started the thread decides."""
    sender = SlackSender(open_server.url)
    msg = approval_thread(open_server, sender, slack, model, "C_OPEN", user="USTART")
    assert "<@USTART> started this, so they decide." in json.dumps(msg["blocks"])
    n = len(slack.called("chat.postEphemeral"))
    sender.click("UOTHER", msg, "C_OPEN", "tb_approve")
    assert "may not" in slack.wait_for("chat.postEphemeral", n + 1)[-1]["text"]
    model.add(text("Deployed."))
    sender.click("USTART", msg, "C_OPEN", "tb_approve")
    body = thread_of(open_server, "done")
    approval = next(e for e in body["events"] if e["type"] == "approval")
    assert (approval["approved"], approval["source"]["user"]) == (True, "USTART")
    assert "Approved by <@USTART>" in json.dumps(update_of(slack, msg["ts"])["blocks"])


@pytest.mark.anyio
async def test_bolt_acknowledges_after_the_listener_stored_the_event(
    tmp_path: Path, slack: FakeSlack
) -> None:
    """The real Bolt app, in process: its response to an event waits for the
    listener's append (with Bolt's default it would go out first)."""
    import asyncio

    from slack_bolt.request.async_request import AsyncBoltRequest

    from bot import ScriptedModel, ThreadBot
    from channels.slack import SlackChannel, SlackSettings
    from store import EventStore

    bot = ThreadBot(EventStore(tmp_path / "t.db"), ScriptedModel())
    channel = SlackChannel(
        bot, SlackSettings(bot_token="xoxb-test", signing_secret=SECRET, api_url=slack.api_url)
    )
    gate = asyncio.Event()
    launch = bot.launch

    async def slow_launch(*args: Any, **kwargs: Any) -> str:
        await gate.wait()
        return await launch(*args, **kwargs)

    bot.launch = slow_launch  # type: ignore[method-assign]
    body, headers = SlackSender("http://unused").signed_event(mention("C_GATE", "deploy"))
    dispatch = asyncio.ensure_future(
        channel.app.async_dispatch(AsyncBoltRequest(body=body, headers=headers))
    )
    await asyncio.sleep(0.3)
    assert not dispatch.done(), "acknowledged before the listener stored the event"
    gate.set()
    response = await asyncio.wait_for(dispatch, 5)
    assert response.status == 200
    assert len(bot.threads()) == 1
    await channel.stop()
    await bot.close()
    bot.store.close()


@pytest.mark.anyio
async def test_web_clients_keep_one_session_per_event_loop() -> None:
    import asyncio

    from channels.slack import SlackSettings
    from channels.slack.web import WebClients

    web = WebClients(SlackSettings(bot_token="xoxb-test", api_url="http://127.0.0.1:9/api"))
    mine = web()
    assert web() is mine and mine.session is not None and not mine.session.closed
    assert mine.base_url == "http://127.0.0.1:9/api/"

    def on_another_loop() -> object:
        async def use() -> object:
            theirs = web()
            await web.close()
            return theirs

        return asyncio.run(use())

    theirs = await asyncio.to_thread(on_another_loop)
    assert theirs is not mine
    assert web() is mine  # closing theirs left this loop's alone
    await web.close()
    assert mine.session.closed
    assert web() is not mine  # a closed one is replaced
    await web.close()


@pytest.mark.anyio
async def test_slack_directory_caches_and_never_blocks(slack: FakeSlack) -> None:
    """users.info is asked once per user; an unknown user, or an address the
    people file gives to someone with another Slack id, leaves the id alone."""
    from bot.people import People, Person
    from channels.slack import SlackSettings
    from channels.slack.people import SlackDirectory
    from channels.slack.web import WebClients

    slack.users.update({"UDIR": ("Dee Dir", "dee@example.com"), "UFAKE": ("Eve", "bob@x.org")})
    people = People([Person(id="bob", slack="UBOB", emails=("bob@x.org",))])
    web = WebClients(SlackSettings(bot_token="xoxb-test", api_url=slack.api_url))
    directory = SlackDirectory(people, web)
    asked = len(slack.called("users.info"))
    first = await directory.source("UDIR", refs={})
    again = await directory.source("UDIR", refs={})
    assert first == again and (first.person, first.name) == ("UDIR", "Dee Dir")
    assert len(slack.called("users.info")) == asked + 1
    assert people.find("dee@example.com") is not None  # learned: approvers by address match
    unknown = await directory.source("UNOSUCH", refs={}, name="nosuch")
    assert (unknown.user, unknown.person, unknown.name, unknown.auth) == (
        "UNOSUCH",
        None,
        "nosuch",
        "slack",
    )
    impostor = await directory.source("UFAKE", refs={})
    assert impostor.person != "bob" and people.find("bob@x.org") == people.find("UBOB")
    await web.close()
