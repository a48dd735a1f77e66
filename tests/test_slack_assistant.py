"""Slack's agent surface (assistant threads), end to end: opened with a
greeting and the tools as suggested prompts; a message there is a thread like
any other, titled after it; the status says what the agent does; the
approval buttons work there; the answer streams in. Signed requests through
the real Bolt app (its `AsyncAssistant` middleware) served by uvicorn, the
local fake Slack Web API, and a model that writes word by word."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot import People, Person, ScriptedModel, tool
from bot.model import call, say

from .slack_fake import FakeSlack, signed_headers
from .test_slack_live import dm, new_ts, serving, settled, streamed_text

pytestmark = pytest.mark.anyio

deployed: list[str] = []


@tool(requires_approval=True, approvers=["ann"])
def deploy(service: str) -> str:
    """Deploy a service: Ann decides."""
    deployed.append(service)
    return f"deployed {service}"


@tool(idempotent=True)
def service_status(service: str) -> str:
    """Show a service's status."""
    return f"{service} is up"


PEOPLE = People([Person("ann", "Ann", slack="U1")])


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


def opened(channel: str, root: str, kind: str = "assistant_thread_started") -> dict[str, Any]:
    return {
        "type": kind,
        "assistant_thread": {
            "user_id": "U1",
            "context": {"channel_id": "C_LOOKING", "team_id": "T1"},
            "channel_id": channel,
            "thread_ts": root,
        },
        "event_ts": new_ts(),
    }


async def test_an_assistant_thread_from_its_start_to_an_approval_and_a_streamed_answer(
    tmp_path: Path, slack: FakeSlack
) -> None:
    deployed.clear()
    model = ScriptedModel.of(call("deploy", service="api"), say("Deployed **api**."))
    tools = [deploy, service_status]
    async with serving(tmp_path / "t.db", slack, model, tools=tools, people=PEOPLE) as s:
        root = new_ts()
        await s.event(opened("D_AS", root))
        # A greeting in the thread, and the tools as suggested prompts.
        greeting = (await asyncio.to_thread(slack.wait_live, "D_AS", "chat.postMessage"))[0]
        assert greeting["thread_ts"] == root and "approval" in greeting["text"]
        prompts = await asyncio.to_thread(
            slack.wait_live, "D_AS", "assistant.threads.setSuggestedPrompts"
        )
        assert prompts[0]["thread_ts"] == root
        assert prompts[0]["prompts"] == [
            {"title": "Deploy", "message": "Deploy a service"},
            {"title": "Service status", "message": "Show a service's status"},
        ]
        assert s.bot.threads() == []  # the thread starts with the first message
        # The person looks at another channel: nothing to keep, nothing posted.
        before = len(slack.live_calls("D_AS"))
        await s.event(opened("D_AS", root, "assistant_thread_context_changed"))

        ask = dm("D_AS", "please deploy   the api", thread_ts=root)
        await s.event(ask)
        body = await settled(s.bot, "waiting_for_approval")
        assert body["events"][0]["source"]["user"] == "U1"  # from the signed event
        title = await asyncio.to_thread(slack.wait_live, "D_AS", "assistant.threads.setTitle")
        assert (title[0]["thread_ts"], title[0]["title"]) == (root, "please deploy the api")
        calls = slack.live_calls("D_AS")
        assert "chat.update" not in [m for m, _ in calls[before:]]
        request = [a for m, a in calls if m == "chat.postMessage"][1]
        assert request["thread_ts"] == root and "Approval needed" in request["text"]
        # The status, not the reaction, says the agent works.
        assert not [r for r in slack.called("reactions.add") if r["timestamp"] == ask["ts"]]

        # Someone else may not decide; the starter, Ann, may (once).
        message = {"ts": request["_ts"], "blocks": request["blocks"]}
        await s.click("U9", message, "D_AS", "tb_approve")
        await asyncio.to_thread(slack.wait_for, "chat.postEphemeral")
        assert deployed == []
        await s.click("U1", message, "D_AS", "tb_approve")
        await s.click("U1", message, "D_AS", "tb_approve")
        body = await settled(s.bot, "done")
        assert deployed == ["api"]

        # The status is cleared once the run has ended: a moment after.
        await asyncio.to_thread(slack.wait_live, "D_AS", "assistant.threads.setStatus", 5)
        calls = slack.live_calls("D_AS")
        statuses = [a["status"] for m, a in calls if m == "assistant.threads.setStatus"]
        assert statuses == [
            "is thinking…",
            "",  # waiting for the decision
            "is running deploy…",
            "is thinking…",
            "",
        ]
        assert all(
            (a["channel_id"], a["thread_ts"]) == ("D_AS", root)
            for m, a in calls
            if m == "assistant.threads.setStatus"
        )
        # The answer streamed into the assistant thread, and is its delivery.
        start = next(a for m, a in calls if m == "chat.startStream")
        assert start["thread_ts"] == root
        assert streamed_text(calls, start["_ts"]) == "Deployed **api**."
        assert body["events"][-1]["refs"]["ts"] == start["_ts"]
        assert len([m for m, _ in calls if m == "chat.postMessage"]) == 2  # greeting, request
        # In order: the status while it works, the stream, the status cleared.
        shown = ("assistant.threads.setStatus", "chat.startStream", "chat.stopStream")
        assert [(m, a.get("status")) for m, a in calls if m in shown][-5:] == [
            ("assistant.threads.setStatus", "is running deploy…"),
            ("assistant.threads.setStatus", "is thinking…"),
            ("chat.startStream", None),
            ("chat.stopStream", None),
            ("assistant.threads.setStatus", ""),
        ]


async def test_assistant_events_need_slacks_signature(tmp_path: Path, slack: FakeSlack) -> None:
    async with serving(tmp_path / "t.db", slack, ScriptedModel(), tools=[deploy]) as s:
        body = json.dumps(
            {
                "team_id": "T1",
                "api_app_id": "A1",
                "type": "event_callback",
                "event_id": "EvFORGED",
                "event_time": 0,
                "event": opened("D_FORGED", new_ts()),
            }
        )
        headers = {"Content-Type": "application/json", **signed_headers(body, secret="wrong")}
        async with httpx.AsyncClient() as client:
            r = await client.post(s.sender.url, content=body, headers=headers)
        assert r.status_code == 401
        # A genuine one after it is greeted: the forged one was not.
        await s.event(opened("D_FORGED", new_ts()))
        await asyncio.to_thread(slack.wait_live, "D_FORGED", "chat.postMessage")
        assert len([m for m, _ in slack.live_calls("D_FORGED") if m == "chat.postMessage"]) == 1
