"""Posting to Slack: questions, approval requests and answers in the bound
Slack thread, and the update that closes a question or approval once settled."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from slack_sdk.errors import SlackApiError

from bot import (
    Answer,
    ApprovalRequest,
    Delivery,
    Failure,
    Notice,
    Outcome,
    People,
    Question,
    Source,
)

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
        self, people: People, web: WebClients, settings: SlackSettings, directory: SlackDirectory
    ) -> None:
        self.people = people
        self.web = web
        self.settings = settings
        self.directory = directory

    async def deliver(self, notice: Notice) -> Delivery:
        origin = notice.origin.refs
        channel, root = origin["channel"], origin["thread_ts"]
        thread_id, seq = notice.thread_id, notice.seq
        posts: list[tuple[str, list[fmt.Block]]]
        match notice:
            case Outcome():
                return await self.show_outcome(notice)
            case Question(text=question, options=options):
                blocks = fmt.question_blocks(thread_id, notice.call_id, question, list(options))
                posts = [(question, blocks)]
            case ApprovalRequest(tool=tool, arguments=arguments):
                who = await self._who_may_approve(notice)
                blocks = fmt.approval_blocks(thread_id, notice.call_id, tool, dict(arguments), who)
                posts = [(f"Approval needed: {tool}", blocks)]
            case Answer(text=text):
                posts = fmt.answer_messages(text)
            case Failure(message=message):
                posts = fmt.answer_messages(f"⚠️ I had to stop: {message}")
            case _:
                raise ValueError(f"Slack cannot deliver {type(notice).__name__}")
        # Each post says what it is, so that after a crash the thread can be
        # searched for posts that went out but were never recorded.
        done = {} if notice.fresh else await self._posted(channel, root, thread_id, seq)
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
        await self._unreact(notice.answers)
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

    async def _who_may_approve(self, request: ApprovalRequest) -> str:
        """The core's rule (who decides), for people to read."""
        decide = request.deciders
        if decide.by == "approvers":
            return "Approvers: " + ", ".join(await self.directory.describe(decide.specs))
        if decide.by == "starter":
            return f"{mention(request.origin.user)} started this, so they decide."
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
        person = self.people.identify(source)
        who = mention(person.display if person else source.who())
        how = _HOW.get(source.auth or "") or next(
            (label for prefix, label in _HOW_PREFIX if (source.auth or "").startswith(prefix)),
            f"through {source.channel}",
        )
        by = f" (by {fmt.escape(source.by)} for them)" if source.by else ""
        return f"{who} {how}{by}"

    async def show_outcome(self, outcome: Outcome) -> Delivery:
        """Update the question or approval message: buttons gone, outcome shown."""
        posted = outcome.request.delivered or {}
        channel, ts = posted.get("channel", ""), posted.get("ts", "")
        if not ts:
            return Delivery()
        by = self._by(outcome.by)
        request = outcome.request
        if isinstance(request, Question):
            text = f"✅ {by} answered: {fmt.escape(outcome.text or '')}"
            head = fmt.to_mrkdwn(request.text)
        else:
            text = f"✅ Approved by {by}" if outcome.kind == "approved" else f"❌ Rejected by {by}"
            if outcome.text:
                text += f": {fmt.escape(outcome.text)}"
            head = fmt.approval_text(request.tool, dict(request.arguments))
        blocks = fmt.decided_blocks(
            [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": fmt.split_mrkdwn(head or "?")[0]},
                }
            ],
            text[:3000],
        )
        try:
            await self.web().chat_update(channel=channel, ts=ts, text=text[:3000], blocks=blocks)
        except SlackApiError as e:
            # A deleted message or a missing scope loses only the update.
            log.warning("could not update %s/%s: %s", channel, ts, e.response.get("error"))
        return Delivery(refs={"channel": channel, "ts": ts})

    async def _unreact(self, answered: Iterable[Source]) -> None:
        """Take the working reaction off the messages answered by this post."""
        for source in answered:
            refs = source.refs
            with contextlib.suppress(SlackApiError):
                await self.web().reactions_remove(
                    channel=refs["channel"], timestamp=refs["ts"], name=WORKING
                )
