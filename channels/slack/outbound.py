"""Posting to Slack.

In the thread's own Slack thread: questions, approval requests, reminders
and escalations, answers, failures and cancellations. Approvers Slack
reaches also get the approval requests, reminders and escalations in a
direct message (or in the channel the people file names for them), for a
thread that started here or elsewhere (email, the HTTP API). Once a request
is settled, wherever that happened, every post of it is updated: buttons
gone, and who settled it and how.

Installed into several workspaces, a conversation is written with its
workspace (`T1:C2`, settings.py) wherever a post is recorded, and each call
goes out with that workspace's token.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping

from slack_sdk.errors import SlackApiError

from bot import (
    Answer,
    ApprovalRequest,
    Cancellation,
    Delivery,
    Failure,
    FollowUp,
    Notice,
    Outcome,
    People,
    Person,
    Question,
    Source,
)

from . import format as fmt
from .people import SlackDirectory
from .settings import (
    WORKING,
    SlackSettings,
    bare,
    is_user_id,
    mention,
    post_route_key,
    qualify,
    team_of,
)
from .web import NotInstalled, WebClients
from .wording import Wording

__all__ = ["SlackPoster"]

log = logging.getLogger("threadbot.slack")

HISTORY_PAGES = 5
"""How far back a direct message is searched for a post that went out just
before a crash (pages of 200 messages): such a post is among the newest."""

Post = tuple[str, list[fmt.Block]]
"""A message to post: its fallback text and its blocks."""


def _slack_id(person: Person) -> str | None:
    if person.slack:
        return person.slack
    return person.id if is_user_id(person.id) else None


def _posts_of(refs: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every (channel, ts) a delivery record names (the channel with its
    workspace, where it has one)."""
    listed = [tuple(p.split("/", 1)) for p in refs.get("posts", "").split() if "/" in p]
    if listed:
        return [(c, t) for c, t in listed]
    if refs.get("channel") and refs.get("ts"):
        return [(qualify(refs.get("team"), refs["channel"]), refs["ts"])]
    return []


class SlackPoster:
    name = "slack"

    def __init__(
        self, people: People, web: WebClients, settings: SlackSettings, directory: SlackDirectory
    ) -> None:
        self.people = people
        self.web = web
        self.settings = settings
        self.directory = directory
        self.say = Wording(people, self.name)

    def reaches(self, person: Person) -> bool:
        """Whether Slack reaches this person: they have a Slack user id, or
        a channel of their own for approvals (installed into several
        workspaces: written with its workspace)."""
        where = person.slack_channel or _slack_id(person)
        return bool(where) and (not self.settings.oauth or team_of(where or "") is not None)

    def home(self, origin: Mapping[str, str]) -> str:
        """The thread's own conversation, with its workspace when installed
        into several."""
        team = origin.get("team") if self.settings.oauth else None
        return qualify(team, origin["channel"])

    async def deliver(self, notice: Notice) -> Delivery:
        match notice:
            case Outcome():
                return await self.show_outcome(notice)
            case Cancellation():
                return await self.show_cancellation(notice)
        if not notice.home:
            posted = await self._reach_people(notice)
            if not posted:
                return Delivery(refs={"failed": "nobody could be reached in Slack"})
            return self._delivery(posted)
        origin = notice.origin.refs
        channel, root = self.home(origin), origin["thread_ts"]
        posts: list[Post]
        match notice:
            case Question() | ApprovalRequest():
                posts = [await self._request_post(notice, team=team_of(channel))]
            case FollowUp():
                posts = [self._follow_up_post(notice)]
            case Answer(text=text):
                posts = fmt.answer_messages(text)
            case Failure(message=message):
                posts = fmt.answer_messages(f"⚠️ I had to stop: {message}")
            case _:
                raise ValueError(f"Slack cannot deliver {type(notice).__name__}")
        first = await self.post(notice, channel, root, posts)
        await self.unreact(notice.answers)
        if not notice.reach:
            return Delivery(refs=self.refs_of(channel, first))
        # Each approver also gets it on their own, where the buttons reach
        # them whether or not they are in this conversation.
        return self._delivery([f"{channel}/{first}", *await self._reach_people(notice)])

    def refs_of(self, conversation: str, ts: str) -> dict[str, str]:
        """A delivery record of one post (its workspace too, where it has one)."""
        team = team_of(conversation)
        refs = {"channel": bare(conversation), "ts": ts}
        return {**refs, "team": team} if team else refs

    async def post(
        self,
        notice: Notice,
        conversation: str,
        root: str | None,
        posts: list[Post],
        *,
        first_part: int = 0,
    ) -> str:
        """Post the parts in a Slack thread (`root`) or a conversation; the
        ts of the first. Each post says what it is, so that after a crash
        the conversation can be searched for posts that went out but were
        never recorded. `first_part`: the number of the first of `posts`
        (the parts before it went out otherwise: a streamed answer)."""
        thread_id, seq = notice.thread_id, notice.seq
        done = {} if notice.fresh else await self._posted(conversation, root, thread_id, seq)
        team, channel = team_of(conversation), bare(conversation)
        first_ts = ""
        for part, (text, blocks) in enumerate(posts, first_part):
            ts = done.get(part)
            if ts is None:
                sent = await self.web(team).chat_postMessage(
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
        return first_ts

    async def _posted(
        self, conversation: str, root: str | None, thread_id: str, seq: int
    ) -> dict[int, str]:
        """The parts of this item already in the Slack thread (or, without
        `root`, among the conversation's newest messages): part → ts."""
        found: dict[int, str] = {}
        cursor = None
        pages = 0
        web, channel = self.web(team_of(conversation)), bare(conversation)
        while True:
            if root is None:
                page = await web.conversations_history(
                    channel=channel, include_all_metadata=True, limit=200, cursor=cursor
                )
            else:
                page = await web.conversations_replies(
                    channel=channel, ts=root, include_all_metadata=True, limit=200, cursor=cursor
                )
            for m in page.get("messages") or []:
                payload = (m.get("metadata") or {}).get("event_payload") or {}
                if payload.get("thread") == thread_id and payload.get("seq") == seq:
                    found[int(payload.get("part", 0))] = str(m["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            pages += 1
            if not cursor or (root is None and pages >= HISTORY_PAGES):
                return found

    # -- what is posted ---------------------------------------------------------

    async def _request_post(
        self,
        request: Question | ApprovalRequest,
        before: list[str] | None = None,
        *,
        team: str | None = None,
    ) -> Post:
        notes = self.say.notes(request)
        if isinstance(request, Question):
            blocks = fmt.question_blocks(
                request.thread_id,
                request.call_id,
                request.text,
                list(request.options),
                before=before,
                notes=notes,
            )
            return request.text, blocks
        who = await self._who_may_approve(request, team)
        blocks = fmt.approval_blocks(
            request.thread_id,
            request.call_id,
            request.tool,
            dict(request.arguments),
            who,
            before=before,
            notes=notes,
        )
        return f"Approval needed: {request.tool}", blocks

    def _follow_up_post(self, follow: FollowUp) -> Post:
        """In the thread: a reminder or an escalation, mentioning the people."""
        who = self.say.people_mentioned(follow.to)
        request = follow.request
        if isinstance(request, ApprovalRequest):
            what, wanted, verb = f"`{fmt.escape(request.tool)}`", "decision", "decide"
        else:
            what, wanted, verb = "The question above", "answer", "answer"
        if follow.kind == "reminder":
            text = f"⏰ {who}: {what} still waits for your {wanted}."
            text += "".join(f" {n}" for n in self.say.notes(request)[:1])
        else:
            text = f"⏫ Escalated to {who}: they may {verb} too."
        text += " Use the buttons above." if isinstance(request, ApprovalRequest) else ""
        return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}]

    async def _reach_people(self, notice: Notice) -> list[str]:
        """A request (or its reminder or escalation) to each person in
        `notice.reach`, by direct message, or once to each channel the people
        file names for them: the posts made, as "channel/ts"."""
        if isinstance(notice, FollowUp):
            request = notice.request
            before = [
                "⏰ Reminder: this still waits for you."
                if notice.kind == "reminder"
                else "⏫ Escalated to you: you may settle this too."
            ]
        elif isinstance(notice, Question | ApprovalRequest):
            request, before = notice, []
        else:
            raise ValueError(f"Slack delivers no {type(notice).__name__} outside its threads")
        before.append(self.say.started(notice.origin))
        targets: dict[str, list[str]] = {}
        for person in notice.reach:
            if not self.reaches(person):
                continue
            slack_id = _slack_id(person)
            key = person.slack_channel or f"@{slack_id}"
            targets.setdefault(key, []).append(mention(slack_id or person.display))
        posted: list[str] = []
        for key, names in targets.items():
            channel = await self._conversation(key)
            if channel is None:
                continue
            lines = before if key.startswith("@") else [f"For {', '.join(names)}:", *before]
            post = await self._request_post(request, lines, team=team_of(channel))
            ts = await self.post(notice, channel, None, [post])
            posted.append(f"{channel}/{ts}")
        return posted

    def _delivery(self, posted: list[str]) -> Delivery:
        first_channel, first_ts = posted[0].split("/", 1)
        # A reply under a post reaches the thread it came from (from those
        # who may write in it: an approvals channel holds others too). A
        # conversation written with its workspace keys the route with it.
        routes = tuple(post_route_key(*p.split("/", 1)) for p in posted)
        return Delivery(
            refs={**self.refs_of(first_channel, first_ts), "posts": " ".join(posted)},
            routes=routes,
        )

    async def _conversation(self, key: str) -> str | None:
        """A channel id as is; `@U…`: the direct message with that user (in
        their workspace, `@T…:U…`, when installed into several)."""
        if not key.startswith("@"):
            return key
        team, user = team_of(key[1:]), bare(key[1:])
        try:
            opened = await self.web(team).conversations_open(users=user)
        except (SlackApiError, NotInstalled) as e:
            # One person Slack cannot message must not hold the others up.
            log.warning("could not message %s: %s", key[1:], _why(e))
            return None
        found = str((opened.get("channel") or {}).get("id", ""))
        return qualify(team, found) if found else None

    async def _who_may_approve(self, request: ApprovalRequest, team: str | None = None) -> str:
        """The core's rule (who decides), for people to read."""
        decide = request.deciders
        if decide.by == "approvers":
            return "Approvers: " + ", ".join(await self.directory.describe(decide.specs, team))
        if decide.by == "starter":
            return f"{mention(request.origin.user)} started this, so they decide."
        admins = self.directory.admins()
        return "Waiting for an admin (group admins) to decide" + (
            ": " + ", ".join(admins) if admins else "."
        )

    # -- settled: every post says so ----------------------------------------------

    async def show_outcome(self, outcome: Outcome) -> Delivery:
        """Update every post of the request, its reminders and escalations:
        buttons gone, the outcome shown."""
        return await self._update(outcome, self.say.outcome(outcome))

    async def show_cancellation(self, cancel: Cancellation) -> Delivery:
        """Every post of what the thread waited for says it was cancelled;
        in the thread's own Slack thread, so does a reply."""
        updated = [await self._update(r, self.say.outcome(r)) for r in cancel.requests]
        if not cancel.home:
            refs = next((d.refs for d in updated if d.refs.get("ts")), {})
            return Delivery(refs=dict(refs))
        origin = cancel.origin.refs
        channel, root = self.home(origin), origin["thread_ts"]
        text = f"⏹ Cancelled by {self.say.by(cancel.by)}"
        if cancel.reason:
            text += f": {fmt.escape(cancel.reason)}"
        post = (text, [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}])
        ts = await self.post(cancel, channel, root, [post])
        await self.unreact(cancel.answers)
        return Delivery(refs=self.refs_of(channel, ts))

    async def _update(self, outcome: Outcome, text: str) -> Delivery:
        request = outcome.request
        if isinstance(request, Question):
            head = fmt.to_mrkdwn(request.text)
        else:
            head = fmt.approval_text(request.tool, dict(request.arguments))
        section = {
            "type": "section",
            "text": {"type": "mrkdwn", "text": fmt.split_mrkdwn(head or "?")[0]},
        }
        blocks = fmt.decided_blocks([section], text[:3000])
        targets: dict[tuple[str, str], None] = {}
        for refs in outcome.posts or ((request.delivered,) if request.delivered else ()):
            targets.update(dict.fromkeys(_posts_of(refs)))
        for channel, ts in targets:
            try:
                await self.web(team_of(channel)).chat_update(
                    channel=bare(channel), ts=ts, text=text[:3000], blocks=blocks
                )
            except (SlackApiError, NotInstalled) as e:
                # A deleted message or a missing scope loses only the update.
                log.warning("could not update %s/%s: %s", channel, ts, _why(e))
        if not targets:
            return Delivery()
        (channel, ts), *_ = targets
        refs = self.refs_of(channel, ts)
        if len(targets) > 1:
            refs["posts"] = " ".join(f"{c}/{t}" for c, t in targets)
        return Delivery(refs=refs)

    async def unreact(self, answered: Iterable[Source]) -> None:
        """Take the working reaction off the messages answered by this post."""
        for source in answered:
            refs = source.refs
            with contextlib.suppress(SlackApiError, NotInstalled):
                await self.web(refs.get("team")).reactions_remove(
                    channel=refs["channel"], timestamp=refs["ts"], name=WORKING
                )


def _why(e: Exception) -> str:
    if isinstance(e, SlackApiError):
        return str(e.response.get("error"))
    return str(e)
