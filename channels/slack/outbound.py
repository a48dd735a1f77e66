"""Posting to Slack: questions, approval requests and answers in the bound
Slack thread, and the update that closes a question or approval once settled."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from slack_sdk.errors import SlackApiError

from bot import Delivery, Source, ThreadBot
from bot.events import (
    Approval,
    AssistantMessage,
    Delivered,
    Error,
    Event,
    HumanResponse,
    ToolCall,
    ToolResult,
    UserMessage,
)
from bot.people import deciders
from bot.thread import HUMAN_INPUT

from . import format as fmt
from .people import SlackDirectory
from .settings import WORKING, SlackSettings, mention
from .web import WebClients

__all__ = ["SlackPoster"]

log = logging.getLogger("threadbot.slack")


_HOW = {
    "email:signed": "by email",
    "email:thread": "by email",
    "admin-token": "through the API",
    "operator": "by the operator",
    "cli": "by the operator",
    "python": "by the operator",
}
_HOW_PREFIX = (("session:", "on the web page"), ("token:", "through the API"))


class SlackPoster:
    name = "slack"

    def __init__(
        self, bot: ThreadBot, web: WebClients, settings: SlackSettings, directory: SlackDirectory
    ) -> None:
        self.bot = bot
        self.web = web
        self.settings = settings
        self.directory = directory

    async def deliver(
        self, thread_id: str, events: Sequence[Event], seq: int, *, fresh: bool = True
    ) -> Delivery:
        origin = next(e for e in events if isinstance(e, UserMessage)).source.refs
        channel, root = origin["channel"], origin["thread_ts"]
        await self._close_settled_elsewhere(thread_id, events)
        event = events[seq]
        posts: list[tuple[str, list[fmt.Block]]]
        if isinstance(event, ToolCall) and event.name == HUMAN_INPUT:
            question = str(event.arguments.get("question", ""))
            options = [str(o) for o in event.arguments.get("options") or []]
            posts = [(question, fmt.question_blocks(thread_id, event.call_id, question, options))]
        elif isinstance(event, ToolCall):
            who = await self._who_may_approve(events, event)
            blocks = fmt.approval_blocks(thread_id, event.call_id, event.name, event.arguments, who)
            posts = [(f"Approval needed: {event.name}", blocks)]
        elif isinstance(event, AssistantMessage):
            posts = fmt.answer_messages(event.text)
        elif isinstance(event, Error):
            posts = fmt.answer_messages(f"⚠️ I had to stop: {event.message}")
        else:
            raise ValueError(f"nothing to deliver at #{seq} ({event.type})")
        # Each post says what it is, so that after a crash the thread can be
        # searched for posts that went out but were never recorded.
        done = {} if fresh else await self._posted(channel, root, thread_id, seq)
        first_ts = ""
        for part, (text, blocks) in enumerate(posts):
            ts = done.get(part)
            if ts is None:
                sent = await self.web().chat_postMessage(
                    channel=channel,
                    thread_ts=root,
                    text=text[:3000],
                    blocks=blocks,
                    unfurl_links=False,
                    metadata={
                        "event_type": "threadbot_post",
                        "event_payload": {"thread": thread_id, "seq": seq, "part": part},
                    },
                )
                ts = str(sent["ts"])
            first_ts = first_ts or ts
        await self._unreact(events)
        return Delivery(refs={"channel": channel, "ts": first_ts})

    async def _posted(self, channel: str, root: str, thread_id: str, seq: int) -> dict[int, str]:
        """The parts of this item already in the Slack thread: part → ts."""
        found: dict[int, str] = {}
        cursor = None
        while True:
            page = await self.web().conversations_replies(
                channel=channel, ts=root, include_all_metadata=True, limit=200, cursor=cursor
            )
            for m in page.get("messages") or []:
                payload = (m.get("metadata") or {}).get("event_payload") or {}
                if payload.get("thread") == thread_id and payload.get("seq") == seq:
                    found[int(payload.get("part", 0))] = str(m["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return found

    async def _who_may_approve(self, events: Sequence[Event], call: ToolCall) -> str:
        """The rule of `bot.people.may_settle`, for people to read."""
        origin = next(e for e in events if isinstance(e, UserMessage)).source
        decide = deciders(self.bot.people, call.approvers, origin)
        if decide.by == "approvers":
            return "Approvers: " + ", ".join(await self.directory.describe(decide.specs))
        if decide.by == "starter":
            return f"{mention(origin.user)} started this, so they decide."
        admins = self.directory.admins()
        return "Waiting for an admin (group admins) to decide" + (
            ": " + ", ".join(admins) if admins else "."
        )

    def _by(self, source: Source | None) -> str:
        """Who settled, and how they were authenticated: a click in Slack
        names the clicker; anything else says where it came from, so that a
        body naming someone is never shown as that person's own click."""
        if source is None:
            return "threadbot"
        if source.channel == self.name and source.auth == "slack":
            return mention(source.user or source.who())
        if source.auth in ("operator", "python") and not source.user and not source.by:
            return "the operator"  # the local operator, or code in the process
        person = self.bot.people.identify(source)
        who = mention(person.display if person else source.who())
        how = _HOW.get(source.auth or "") or next(
            (label for prefix, label in _HOW_PREFIX if (source.auth or "").startswith(prefix)),
            f"through {source.channel}",
        )
        by = f" (by {fmt.escape(source.by)} for them)" if source.by else ""
        return f"{who} {how}{by}"

    async def _close_settled_elsewhere(self, thread_id: str, events: Sequence[Event]) -> None:
        """Buttons of questions and approvals settled since the last post by
        anything but a click on them (a reply in the thread, HTTP, the CLI)
        disappear now."""
        posted: dict[int, dict[str, str]] = {}
        calls: dict[str, int] = {}
        last_post = -1
        for i, e in enumerate(events):
            if isinstance(e, Delivered) and e.channel == self.name:
                posted[e.of_seq] = e.refs
                last_post = i
            elif isinstance(e, ToolCall):
                calls[e.call_id] = i
        for e in events[last_post + 1 :]:
            if isinstance(e, HumanResponse | Approval | ToolResult):
                refs = posted.get(calls.get(e.call_id, -1))
                clicked = e.source is not None and refs and e.source.refs.get("ts") == refs["ts"]
                if refs and not clicked:
                    await self.show_outcome(thread_id, e.call_id, refs["channel"], refs["ts"])

    async def show_outcome(self, thread_id: str, call_id: str, channel: str, ts: str) -> None:
        """Update a question or approval message: buttons gone, outcome shown."""
        view = self.bot.get(thread_id)
        resolution = view.state.resolved.get(call_id)
        call = self.call(thread_id, call_id)
        if resolution is None or call is None or not ts:
            return
        settled = view.events[resolution.seq]
        by = self._by(resolution.source)
        if isinstance(settled, HumanResponse):
            outcome = f"✅ {by} answered: {fmt.escape(settled.text)}"
            head = fmt.to_mrkdwn(str(call.arguments.get("question", "")))
        elif isinstance(settled, Approval):
            outcome = f"✅ Approved by {by}" if settled.approved else f"❌ Rejected by {by}"
            if settled.comment:
                outcome += f": {fmt.escape(settled.comment)}"
            head = fmt.approval_text(call.name, call.arguments)
        else:
            return
        blocks = fmt.decided_blocks(
            [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": fmt.split_mrkdwn(head or "?")[0]},
                }
            ],
            outcome[:3000],
        )
        try:
            await self.web().chat_update(channel=channel, ts=ts, text=outcome[:3000], blocks=blocks)
        except SlackApiError as e:
            log.warning("could not update %s/%s: %s", channel, ts, e.response.get("error"))

    def call(self, thread_id: str, call_id: str) -> ToolCall | None:
        for e in reversed(self.bot.get(thread_id).events):
            if isinstance(e, ToolCall) and e.call_id == call_id:
                return e
        return None

    async def _unreact(self, events: Sequence[Event]) -> None:
        """Take the working reaction off the messages answered by this post."""
        for e in reversed(events):
            if isinstance(e, Delivered) and e.channel == self.name:
                break
            if isinstance(e, UserMessage | HumanResponse) and e.source.channel == self.name:
                refs = e.source.refs
                with contextlib.suppress(SlackApiError):
                    await self.web().reactions_remove(
                        channel=refs["channel"], timestamp=refs["ts"], name=WORKING
                    )
