"""The Slack channel: Bolt listeners in, Web API calls out.

Inbound, a DM or an @mention launches a thread bound to its Slack thread
(channel + thread_ts); a later message in that Slack thread answers the open
question or continues the conversation; buttons answer options and decide
approvals. Every inbound message is keyed by its channel and ts, so Slack's
retries and the `app_mention` + `message` pair for one post land once.
Outbound, the core's notices (questions, approval requests, reminders and
escalations, answers, cancellations, and the outcome of a posted question or
approval) are posted in, or updated in, the bound Slack thread; for threads
that started elsewhere, the people Slack reaches get them by direct message
(outbound.py). The runner records each as `delivered`.

With one workspace's bot token, that workspace is the only one. Installed
into several by Slack's OAuth flow (install.py), each request is authorized
for the workspace it came from, and everything it names is qualified by that
workspace: route keys, message keys, the Slack user in a source (`T1:U2`),
so that two workspaces' identical ids never meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp, AsyncAssistant
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot import (
    AlreadyAnswered,
    ApprovalRequest,
    AwaitingDecision,
    Delivery,
    News,
    Notice,
    Person,
    Question,
    Refused,
    Source,
    ThreadBot,
    ThreadNotFound,
    UsageError,
)

from . import format as fmt
from . import install
from .install import Installations
from .outbound import SlackPoster
from .payloads import shape_problem
from .people import SlackDirectory
from .settings import WORKING, SlackSettings, bare, mention, post_route_key, qualify, route_key
from .stream import Streams, is_assistant
from .web import NotInstalled, WebClients, base_url

__all__ = ["SlackChannel", "SlackSettings", "route_key"]

log = logging.getLogger("threadbot.slack")

_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")
# Message subtypes that are a person writing; every other subtype (edits,
# deletions, joins, bot posts) is ignored.
_PLAIN_SUBTYPES = {None, "file_share", "thread_broadcast"}
_ASKS_PEOPLE = "request_human_input"
"""The core's own tool for asking a person: no suggestion to make of it."""
PROMPTS = 4
"""Suggested prompts in an assistant thread (Slack shows four at most)."""
GREETING = "Hi! Tell me what you need. Anything that needs approval, I ask before doing it."
OUTSIDER = "I only take requests, answers and decisions from members of the workspaces I'm in."


class SlackChannel:
    name = "slack"

    def __init__(
        self, bot: ThreadBot, settings: SlackSettings, installations: Installations | None = None
    ) -> None:
        self.bot = bot
        self.settings = settings
        self.installations = installations
        """Installed into several workspaces: where the installations are."""
        oauth: dict[str, Any] = {}
        if settings.oauth:
            if installations is None:
                raise UsageError("installing into several Slack workspaces needs a store")
            if settings.socket_mode:
                raise UsageError(
                    "SLACK_APP_TOKEN (Socket Mode) serves one workspace: set SLACK_BOT_TOKEN "
                    "with it, or leave it out to install into several by OAuth"
                )
            install.check_people(bot.people, bot.tools)
            oauth = {
                "oauth_flow": install.oauth_flow(settings, installations),
                "authorize": install.authorize(installations),
            }
        self.web = WebClients(settings, installations.bot_token if installations else None)
        """Our calls to Slack, over connections kept open (one set per loop)."""
        self.app = AsyncApp(
            # Bolt's own calls (checking the token once, installing) need no
            # kept session. Installed into several workspaces, each request's
            # `context.client` carries its workspace's token.
            client=AsyncWebClient(token=settings.bot_token, base_url=base_url(settings)),
            signing_secret=settings.signing_secret or "",
            # Socket Mode requests are authenticated by the socket itself.
            request_verification_enabled=not settings.socket_mode,
            name="threadbot",
            # Acknowledge only once the listener has stored what arrived: a
            # crash before that leaves the event unacknowledged, and Slack
            # sends it again. Calls back to Slack (reactions, notices, message
            # updates) run after the acknowledgement (`_later`).
            process_before_response=True,
            **oauth,
        )
        self.directory = SlackDirectory(bot.people, self.web)
        """Who a Slack user is in the people directory (`users.info`)."""
        self.poster = SlackPoster(bot.people, self.web, settings, self.directory)
        self.streams = Streams(bot, self.web, self.poster)
        """Replies streamed as they are written; the status in assistant threads."""
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._socket: AsyncSocketModeHandler | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Slack's agent surface: a thread per conversation in the app's own
        # pane. Bolt's middleware takes assistant_thread_started and every
        # reply in a direct message's thread (whether or not it is an
        # assistant thread) before the listeners below.
        assistant = AsyncAssistant()
        assistant.thread_started(self._on_assistant_thread)
        assistant.user_message(self._on_assistant_message)
        assistant.thread_context_changed(self._on_context_changed)
        self.app.assistant(assistant)
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.action(re.compile(r"^tb_option_\d+$"))(self._on_option)
        self.app.action("tb_approve")(self._on_approve)
        self.app.action("tb_reject")(self._on_form)
        self.app.action("tb_respond")(self._on_form)
        self.app.action("tb_cancel")(self._on_cancel)
        self.app.view("tb_reject_modal")(self._on_form_submit)
        self.app.view("tb_respond_modal")(self._on_form_submit)
        if settings.oauth:
            # Uninstalled, or its token revoked: Bolt forgets the workspace's
            # installation (its token is no longer used within a minute).
            self.app.enable_token_revocation_listeners()

    def mount(self, api: FastAPI, path: str = "/slack/events") -> None:
        """Serve Slack's events and interactivity on the API's server (HTTP
        mode). Bolt checks each request's signature: a bad or stale one gets
        401 and changes nothing. Installed into several workspaces, also
        Slack's OAuth flow: `/slack/install` and `/slack/oauth_redirect`."""
        handler = AsyncSlackRequestHandler(self.app)
        flow = self.app.oauth_flow
        if flow is not None:

            async def oauth(request: Request) -> Response:
                return await handler.handle(request)

            for oauth_path in (flow.install_path, flow.redirect_uri_path):
                api.add_api_route(oauth_path, oauth, methods=["GET"], include_in_schema=False)
        verifier = SignatureVerifier(self.settings.signing_secret or "")

        async def slack_events(request: Request) -> Response:
            body = await request.body()
            if not verifier.is_valid_request(body, dict(request.headers)):
                return JSONResponse({"error": "invalid Slack signature"}, status_code=401)
            problem = shape_problem(body, request.headers.get("content-type", ""))
            if problem is not None:
                return JSONResponse({"error": problem}, status_code=400)
            return await handler.handle(request)

        api.add_api_route(path, slack_events, methods=["POST"], include_in_schema=False)

    async def start(self) -> None:
        """In Socket Mode, connect to Slack (no public URL needed)."""
        if self.settings.app_token and self._socket is None:
            self._socket = AsyncSocketModeHandler(self.app, self.settings.app_token)
            await self._socket.connect_async()  # type: ignore[no-untyped-call]  # untyped in slack_bolt

    async def ready(self) -> str | None:
        """None while Slack can reach threadbot: in Socket Mode, while the
        socket is connected (its app token was accepted); in HTTP mode
        Slack's requests come to the server itself."""
        if not self.settings.socket_mode:
            return None
        if self._socket is None or not await self._socket.client.is_connected():
            return "the Socket Mode connection is down"
        return None

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]  # untyped in slack_bolt
            self._socket = None
        if self._background:  # calls back to Slack still on their way
            await asyncio.wait(self._background, timeout=5.0)
        await self.web.close()
        if self.installations is not None and self.installations.aclose is not None:
            await self.installations.aclose()

    async def aclose(self) -> None:
        """Close the connections the agent's posts used (on its loop)."""
        await self.streams.close()
        await self.web.close()

    # -- inbound: messages ------------------------------------------------

    async def _on_mention(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._inbound(event, body, context, mentioned=True)

    async def _on_message(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._inbound(event, body, context, mentioned=False)

    def _team(self, context: AsyncBoltContext) -> str | None:
        """Installed into several workspaces: the one the request came from
        (Slack signed it, and it is installed: Bolt authorized it). With one
        workspace's token: None, and ids stay bare."""
        if not self.settings.oauth:
            return None
        if not context.team_id:
            raise ValueError("a request from Slack with no workspace")
        return context.team_id

    async def _actor(
        self, context: AsyncBoltContext, home: Any, user: str, *, shared: bool = False
    ) -> tuple[str | None, bool]:
        """Who acted, beyond the workspace the request came through: their own
        workspace (`home`, as Slack gives it: `event.user_team`,
        `user.team_id`), which in a channel shared with another workspace
        (Slack Connect) may be someone else's. Returns the workspace to
        qualify the user id with, and whether they are a member: of the
        workspace the request came through, or (installed into several) of
        another one listed and installed. Anyone else is known by their own
        workspace's id, so never taken for someone of ours with the same id.
        With one workspace's token, its members' ids stay bare.

        In an Enterprise Grid organization, Slack gives a member's home
        workspace, which may be another of the organization's: whoever Slack
        says belongs to our workspace's organization is one of ours, known by
        the id our workspace knows them by. In a channel `shared` with other
        workspaces, a writer whose workspace Slack does not say is one of
        ours only if they belong to our organization."""
        via = self._team(context)
        theirs = home if isinstance(home, str) and home else None
        if theirs is not None and theirs.startswith("E") and theirs == context.enterprise_id:
            # An organization's member, in one of its own workspaces.
            theirs = None
        result = context.authorize_result
        if theirs is None and not shared:
            return via, True
        if self.settings.oauth:
            if theirs == via:
                return via, True
            if await self._in_our_organization(context, user):
                return via, True
            assert self.installations is not None  # settings.oauth
            return theirs or via, theirs is not None and await self.installations.installed(theirs)
        # One workspace's token: its workspace is the token's (auth.test),
        # whatever the payload says.
        ours = (result.team_id if result is not None else None) or context.team_id
        if theirs is not None and (not ours or theirs == ours):
            return None, True
        if await self._in_our_organization(context, user):
            return None, True
        return theirs, False

    async def _in_our_organization(self, context: AsyncBoltContext, user: str) -> bool:
        """Whether `user` belongs to the Enterprise Grid organization of the
        workspace the request came through: its own (auth.test's, never the
        payload's), and theirs as Slack's directory says it to our token."""
        result = context.authorize_result
        ours = result.enterprise_id if result is not None else None
        if not ours or not user:
            return False
        found = await self.directory.user(user, self._team(context))
        return found is not None and found.enterprise == ours

    def _first_time(self, key: str) -> bool:
        """For replies that write no event: say them once per Slack message."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        return True

    async def _on_assistant_message(
        self, event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """A person's message in a direct message's thread: in an assistant
        thread, or under a message of a plain direct message."""
        await self._inbound(event, body, context, mentioned=False)

    async def _on_assistant_thread(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        """Someone opened an assistant thread: a greeting, and the tools as
        suggested prompts. The thread starts with their first message."""
        opened = event.get("assistant_thread") or {}
        channel, root = opened.get("channel_id"), opened.get("thread_ts")
        if channel and root:
            self._later(self._greet(str(channel), str(root), self._team(context)))

    async def _on_context_changed(self) -> None:
        """The person looks at another channel beside the assistant thread.
        The agent reads no channel, so there is nothing to keep (Bolt's
        default would store it in the greeting's metadata)."""

    async def _greet(self, channel: str, root: str, team: str | None) -> None:
        prompts = [
            {"title": t.name.replace("_", " ").capitalize()[:75], "message": _first_line(t)}
            for t in self.bot.tools
            if t.name != _ASKS_PEOPLE
        ][:PROMPTS]
        try:
            await self.web(team).chat_postMessage(channel=channel, thread_ts=root, text=GREETING)
            if prompts:
                await self.web(team).assistant_threads_setSuggestedPrompts(
                    channel_id=channel, thread_ts=root, prompts=prompts, title="Try:"
                )
        except SlackApiError as e:
            log.warning("could not greet in an assistant thread: %s", e.response.get("error"))

    async def _title(self, channel: str, root: str, text: str, team: str | None) -> None:
        title = " ".join(text.split())
        title = title if len(title) <= 60 else title[:59] + "…"
        try:
            await self.web(team).assistant_threads_setTitle(
                channel_id=channel, thread_ts=root, title=title
            )
        except SlackApiError as e:
            log.warning("could not title an assistant thread: %s", e.response.get("error"))

    async def _inbound(
        self,
        event: dict[str, Any],
        body: dict[str, Any],
        context: AsyncBoltContext,
        *,
        mentioned: bool,
    ) -> None:
        if (
            event.get("subtype") not in _PLAIN_SUBTYPES
            or event.get("bot_id")
            or not event.get("user")
        ):
            return  # edits, deletions, joins, bots (this one included)
        team = self._team(context)
        # The writer's own workspace: Slack Connect events say it (`user_team`,
        # `user_profile.team`; a message's `team` is its writer's).
        profile = event.get("user_profile")
        home = (
            event.get("user_team")
            or (profile.get("team") if isinstance(profile, dict) else None)
            or event.get("team")
        )
        channel, ts, user = event["channel"], event["ts"], event["user"]
        their_team, member = await self._actor(
            context, home, user, shared=body.get("is_ext_shared_channel") is True
        )
        root = event.get("thread_ts") or ts
        text = _MENTION.sub("", event.get("text") or "").strip()
        key = f"slack:msg:{qualify(team, channel)}:{ts}"
        refs = {
            "channel": channel,
            "ts": ts,
            "thread_ts": root,
            "team": team or str(body.get("team_id", "")),
        }
        thread_id = self.bot.routed(route_key(channel, root, team))
        if not member:
            # Someone of another workspace, in a channel shared with ours:
            # nothing they write reaches a thread.
            addressed = mentioned or event.get("channel_type") == "im"
            bound = thread_id or self.bot.routed(post_route_key(channel, root, team))
            if (addressed or bound) and self._first_time(key):
                self._later(self._ephemeral(channel, user, root, OUTSIDER, team))
            return
        # Under a request posted to an approver elsewhere than the thread's
        # own conversation, only those who may write in the thread may.
        members_only = thread_id is None
        if thread_id is None:
            thread_id = self.bot.routed(post_route_key(channel, root, team))
        if thread_id is None:
            if not (mentioned or event.get("channel_type") == "im"):
                return  # a channel conversation that is not for us
            if not text:
                if self._first_time(key):
                    self._later(
                        self._ephemeral(
                            channel, user, root, "Tell me what you need after the mention.", team
                        )
                    )
                return
            if not self.bot.received(key):
                # A direct message's thread that is no thread of ours yet:
                # Slack's assistant pane (each conversation there is a thread).
                assistant = event.get("channel_type") == "im" and root != ts
                if assistant:
                    refs["assistant"] = "1"
                source = await self.directory.source(user, refs=refs, team=their_team)
                await self.bot.launch(
                    text, source=source, key=key, routes=[route_key(channel, root, team)]
                )
                if assistant:
                    self._later(self._title(channel, root, text, team))
                if not assistant or self.streams.no_status(source):
                    self._later(self._react(channel, ts, team))
            return
        if not text or self.bot.received(key):
            return
        source = await self.directory.source(user, refs=refs, team=their_team)
        await self._continue(thread_id, text, source, key, members_only=members_only)

    async def _continue(
        self, thread_id: str, text: str, source: Source, key: str, *, members_only: bool
    ) -> None:
        """A reply in a Slack thread bound to the thread: the core decides
        what it is. Anyone in the thread's own Slack conversation may write
        in it; under a post to an approver, only who may write in the thread."""
        refs = source.refs
        team = refs.get("team") if self.settings.oauth else None
        try:
            await self.bot.reply(thread_id, text, source=source, key=key, members_only=members_only)
        except Refused as e:
            notice = str(e)
            if isinstance(e, AwaitingDecision):
                notice = (
                    f"I'm waiting for a decision on `{fmt.escape(e.tool)}`: use the buttons above."
                )
            if self._first_time(key):
                self._later(
                    self._ephemeral(
                        refs["channel"], source.user or "", refs["thread_ts"], notice, team
                    )
                )
            return
        origin = self.bot.get(thread_id).state.origin
        if origin is None or not is_assistant(origin) or self.streams.no_status(origin):
            self._later(self._react(refs["channel"], refs["ts"], team))

    # -- inbound: buttons, and the forms for a reason or a reply instead ---------

    async def _clicked(
        self, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> tuple[dict[str, Any], Source]:
        value = json.loads(action["value"])
        container = body.get("container") or {}
        channel = container.get("channel_id") or (body.get("channel") or {}).get("id", "")
        ts = container.get("message_ts") or (body.get("message") or {}).get("ts", "")
        team = self._team(context)
        value.update(ch=channel, ts=ts, team=team)
        refs = {"channel": channel, "ts": ts}
        their_team, member = await self._actor(
            context, body["user"].get("team_id"), str(body["user"].get("id") or "")
        )
        source = await self.directory.source(
            body["user"]["id"],
            refs={**refs, "team": team} if team else refs,
            name=body["user"].get("username") or None,
            team=their_team,
            member=member,
        )
        return value, source

    async def _on_option(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        v, source = await self._clicked(body, action, context)
        if self._outsider(v, source):
            await ack()
            return
        request = self.bot.request(v["t"], v["c"], self.name)
        options = request.options if isinstance(request, Question) else ()
        if not 0 <= v.get("i", -1) < len(options):
            await ack()
            return
        option = options[v["i"]]
        await self._settle_click(
            ack,
            v,
            source,
            self.bot.respond(v["t"], option, call_id=v["c"], option=option, source=source),
        )

    async def _on_approve(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        v, source = await self._clicked(body, action, context)
        if self._outsider(v, source):
            await ack()
            return
        await self._settle_click(
            ack, v, source, self.bot.decide(v["t"], True, call_id=v["c"], source=source)
        )

    def _outsider(self, v: dict[str, Any], source: Source) -> bool:
        """Someone of another workspace (no member) settles nothing: told
        so, privately."""
        if source.member:
            return False
        self._later(self._ephemeral(v["ch"], source.user or "", None, OUTSIDER, v["team"]))
        return True

    async def _settle_click(self, ack: Any, v: dict[str, Any], source: Source, settle: Any) -> None:
        """Store the click's answer or decision, then acknowledge it. The
        message itself is updated by the runner (an `Outcome` notice), as it
        is when the call is settled anywhere else."""
        try:
            await settle
        except AlreadyAnswered as e:
            await ack()
            notice = f"Already settled by {mention(e.user or e.by)}."
            self._later(self._ephemeral(v["ch"], source.user or "", None, notice, v["team"]))
        except Refused as e:
            await ack()
            self._later(self._ephemeral(v["ch"], source.user or "", None, str(e), v["team"]))
        else:
            await ack()

    async def _on_cancel(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """Cancel the thread (Slack asked the clicker to confirm first)."""
        v, source = await self._clicked(body, action, context)
        if self._outsider(v, source):
            await ack()
            return
        await self._settle_click(ack, v, source, self.bot.cancel(v["t"], source=source))

    async def _on_form(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """Reject, or Reply instead: a form asks for the text. Someone who
        may not decide is told so, and gets no form."""
        await ack()  # nothing is stored yet: the text comes with the form
        v, source = await self._clicked(body, action, context)
        if self._outsider(v, source):
            return
        try:
            self.bot.check(v["t"], "approval", call_id=v["c"], source=source)
        except AlreadyAnswered as e:
            notice = f"Already settled by {mention(e.user or e.by)}."
            self._later(self._ephemeral(v["ch"], source.user or "", None, notice, v["team"]))
            return
        except Refused as e:
            self._later(self._ephemeral(v["ch"], source.user or "", None, str(e), v["team"]))
            return
        request = self.bot.request(v["t"], v["c"], self.name)
        tool = request.tool if isinstance(request, ApprovalRequest) else "this"
        form = fmt.respond_modal if action["action_id"] == "tb_respond" else fmt.reject_modal
        # The trigger is good for three seconds after the click.
        self._later(
            self._open_view(
                body["trigger_id"], form(v["t"], v["c"], v["ch"], v["ts"], tool), v["team"]
            )
        )

    async def _on_form_submit(
        self, ack: Any, body: dict[str, Any], view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """The reason for a rejection, or the reply instead of a decision:
        whoever submits it must be allowed to decide, as for a click."""
        try:
            meta = json.loads(view["private_metadata"])
            t, c, ch, ts = (str(meta[k]) for k in ("t", "c", "ch", "ts"))
            text = (view["state"]["values"]["reason"]["text"].get("value") or "").strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            await ack(response_action="errors", errors={"reason": "This is not a threadbot form."})
            return
        team = self._team(context)
        refs = {"channel": ch, "ts": ts, "view": view.get("id", "")}
        their_team, member = await self._actor(
            context, body["user"].get("team_id"), str(body["user"].get("id") or "")
        )
        source = await self.directory.source(
            body["user"]["id"],
            refs={**refs, "team": team} if team else refs,
            team=their_team,
            member=member,
        )
        if not member:
            await ack(response_action="errors", errors={"reason": OUTSIDER[:150]})
            return
        try:
            if view.get("callback_id") == "tb_respond_modal":
                await self.bot.decide(t, False, respond=text, call_id=c, source=source)
            else:
                await self.bot.decide(t, False, comment=text, call_id=c, source=source)
        except (Refused, UsageError, ThreadNotFound) as e:
            await ack(response_action="errors", errors={"reason": str(e)[:150]})
            return
        await ack()

    def _later(self, call: Coroutine[Any, Any, None]) -> None:
        """Run a call back to Slack after the acknowledgement."""
        task = asyncio.get_running_loop().create_task(call)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("a call to Slack failed", exc_info=e)

    async def _open_view(self, trigger_id: str, view: dict[str, Any], team: str | None) -> None:
        try:
            await self.web(team).views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as e:
            log.warning("could not open the reason form: %s", e.response.get("error"))

    # -- outbound: see outbound.py -------------------------------------------

    def reaches(self, person: Person) -> bool:
        return self.poster.reaches(person)

    def show(self, news: News, origin: Source) -> None:
        """The reply as it is written, and what the agent does (on the
        agent's loop; never waits for Slack)."""
        self.streams.show(news, origin)

    async def deliver(self, notice: Notice) -> Delivery:
        if notice.home:
            streamed = await self.streams.deliver(notice)
            if streamed is not None:
                return streamed
        return await self.poster.deliver(notice)

    async def _ephemeral(
        self, channel: str, user: str, thread_ts: str | None, text: str, team: str | None = None
    ) -> None:
        try:
            await self.web(team).chat_postEphemeral(
                channel=channel, user=bare(user), text=text, thread_ts=thread_ts
            )
        except (SlackApiError, NotInstalled) as e:
            log.warning("could not tell %s: %s", user, e)

    async def _react(self, channel: str, ts: str, team: str | None = None) -> None:
        # A missing scope or a race with the answer loses only a hint.
        with contextlib.suppress(SlackApiError, NotInstalled):
            await self.web(team).reactions_add(channel=channel, timestamp=ts, name=WORKING)


def _first_line(t: Any) -> str:
    """What a tool's suggested prompt asks: its description's first sentence."""
    line = str(t.description or t.name).strip().splitlines()[0]
    return line.split(": ")[0].rstrip(".")[:150] or str(t.name)
