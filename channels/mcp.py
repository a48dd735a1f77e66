"""threadbot as an MCP server: other agents reach a person through it.

Three tools, over stdio (`threadbot mcp`) or streamable HTTP (`/mcp` in
`threadbot serve`, behind the same Host, cross-site and token rules as the
HTTP API):

    ask_human(question, options?, person?, wait?)     a person's answer
    request_approval(action, details, approvers?, wait?)  a decision
    get_answer(handle)                                 where a request stands

Each request opens a thread whose origin is the MCP client (channel `mcp`,
as the authenticated identity: the token's person, or the local operator on
stdio). The core reaches the people on their channels as it does for any
question or approval (`ThreadBot.ask`, `ThreadBot.ask_approval`); this
module only translates, waits and reports. A call waits for the answer,
telling the client how long it has waited in progress notifications (the
first at once, with the handle); with `wait: false` it returns the handle
at once, for `get_answer`. A handle is shown only to whoever may see its
thread: the identity that asked, the people asked, the admins. One identity
has at most `WAITING_MAX` calls waiting.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot import Source, ThreadBot, ThreadbotError, Watch

from .auth import identity_of

__all__ = ["PROGRESS_EVERY", "WAITING_MAX", "McpChannel", "RequestState", "http_identity"]

CHANNEL = "mcp"

PROGRESS_EVERY = 20.0
"""Seconds between progress notifications while a call waits: often enough
for a client that resets its timeout on progress to keep waiting."""

QUESTION_MAX = 10_000
DETAILS_MAX = 20_000
OPTIONS_MAX = 20
OPTION_MAX = 200
PEOPLE_MAX = 20
OPENED_MAX = 60
"""Requests one identity may open in OPENED_WINDOW (an admin, any number):
each reaches people by mail or Slack, and a client in a loop would flood them."""

OPENED_WINDOW = 3600.0

WAITING_MAX = 16
"""Calls one identity may have waiting at once (each holds a connection and
a watch): more ask with `wait: false` and poll."""

Status = Literal["waiting", "answered", "approved", "rejected", "cancelled", "failed"]


class RequestState(BaseModel):
    """Where a request stands: the tools' structured result."""

    handle: str = Field(description="The request's thread id: get_answer(handle) looks again.")
    status: Status
    answer: str | None = Field(None, description="A question's answer.")
    option: str | None = Field(None, description="The option chosen, when options were given.")
    approved: bool | None = Field(None, description="An approval's decision.")
    comment: str | None = Field(None, description="The reason given with a decision.")
    by: str | None = Field(None, description="Who answered or decided (a name or an address).")
    via: str | None = Field(None, description="How they were authenticated: email:signed, slack…")
    at: str | None = Field(None, description="When (ISO 8601, UTC).")
    reached: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Who was asked on which channel (email, slack: people's ids); "
        "empty when no channel reaches them (the web page and the HTTP API still show it).",
    )


Identify = Callable[[Context], Source]


def http_identity(bot: ThreadBot) -> Identify:
    """The identity `channels.auth` authenticated for the HTTP request that
    carries the call, as the events' source on channel `mcp`."""

    def identify(ctx: Context) -> Source:
        request = ctx.request_context.request
        scope = getattr(request, "scope", None)
        if scope is None:
            raise ToolError("this call came without an authenticated HTTP request")
        return identity_of(scope).source(bot.people, None, channel=CHANNEL)

    return identify


class McpChannel:
    def __init__(
        self,
        bot: ThreadBot,
        identify: Identify,
        *,
        progress_every: float = PROGRESS_EVERY,
        opened_max: int = OPENED_MAX,
    ) -> None:
        self.bot = bot
        self.identify = identify
        self.progress_every = progress_every
        self.opened_max = opened_max
        self._opened: dict[str, deque[float]] = {}
        """When each identity opened its latest requests."""
        self._waiting: Counter[str] = Counter()
        """Calls waiting, by who made them."""
        self.server = self._build()

    def http_routes(self) -> list[BaseRoute]:
        """The `/mcp` route for the HTTP server; it serves while
        `self.server.session_manager.run()` runs. The server's own Host and
        Origin checks stand in front of it (channels/guard.py), so the SDK's
        are off."""
        app = self.server.streamable_http_app(
            streamable_http_path="/mcp",
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        for route in app.routes:
            if isinstance(route, Route):
                route.app = _sessions_owned(route.app)
        return list(app.routes)

    # -- the tools ------------------------------------------------------------

    def _build(self) -> MCPServer:
        server: MCPServer = MCPServer(
            "threadbot",
            instructions=(
                "Reach a person: ask_human for an answer, request_approval for a "
                "decision. Each waits for the person (progress notifications meanwhile) "
                "unless wait is false; get_answer(handle) looks again."
            ),
        )

        @server.tool()
        async def ask_human(
            question: str,
            ctx: Context,
            options: list[str] | None = None,
            person: str | None = None,
            wait: bool = True,
        ) -> RequestState:
            """Ask a person a question and return their answer. `options`: the
            answers to choose from; `person`: who to ask (the people file's id
            or group:NAME; by default the person this client acts for, or the
            deployment's approvers). With `wait` false, returns a handle at once."""
            source = self.identify(ctx)
            if len(question) > QUESTION_MAX:
                raise ToolError(f"a question has at most {QUESTION_MAX} characters")
            if options is not None and (
                len(options) > OPTIONS_MAX or any(len(o) > OPTION_MAX for o in options)
            ):
                raise ToolError(f"at most {OPTIONS_MAX} options of {OPTION_MAX} characters")
            with self._slot(source, wait):
                thread_id = await self._open(
                    source,
                    lambda: self.bot.ask(
                        question, options=options or (), person=person, source=source
                    ),
                )
                return await self._answer(thread_id, ctx, wait)

        @server.tool()
        async def request_approval(
            action: str,
            ctx: Context,
            details: str = "",
            approvers: list[str] | None = None,
            wait: bool = True,
        ) -> RequestState:
            """Ask for approval of `action` (one line) with `details`, and
            return the decision: approved true or false, by whom, and why.
            `approvers`: who may decide (people's ids, group:NAME); by default
            the deployment's approvers, else the person this client acts for.
            With `wait` false, returns a handle at once."""
            source = self.identify(ctx)
            if len(details) > DETAILS_MAX:
                raise ToolError(f"details have at most {DETAILS_MAX} characters")
            if approvers is not None and len(approvers) > PEOPLE_MAX:
                raise ToolError(f"at most {PEOPLE_MAX} approvers")
            with self._slot(source, wait):
                thread_id = await self._open(
                    source,
                    lambda: self.bot.ask_approval(
                        action, details, approvers=approvers or (), source=source
                    ),
                )
                return await self._answer(thread_id, ctx, wait)

        @server.tool()
        async def get_answer(handle: str, ctx: Context) -> RequestState:
            """Where a request made with ask_human or request_approval stands:
            waiting, or its answer or decision."""
            source = self.identify(ctx)
            row = self.bot.thread_row(handle) if handle.isalnum() and len(handle) <= 32 else None
            origin = json.loads(row.origin or "{}") if row is not None else {}
            # The same refusal whether the thread exists or not: a handle
            # someone else made tells nothing.
            if origin.get("channel") != CHANNEL or not self.bot.may_see(handle, source):
                raise ToolError(f"no request with handle {handle!r} that you may see")
            return self._state(handle)

        return server

    async def _open(self, source: Source, start: Callable[[], Any]) -> str:
        now = time.monotonic()
        opened = self._opened.setdefault(_holder(source), deque())
        while opened and opened[0] <= now - OPENED_WINDOW:
            opened.popleft()
        if len(opened) >= self.opened_max and not source.admin:
            raise ToolError(
                f"you opened {len(opened)} requests in the last hour, the most one "
                "client may: wait, or ask the operator"
            )
        try:
            thread_id: str = await start()
        except ThreadbotError as e:
            raise ToolError(str(e)) from None
        opened.append(now)
        return thread_id

    # -- waiting ----------------------------------------------------------------

    @contextmanager
    def _slot(self, source: Source, wait: bool) -> Iterator[None]:
        """One of the caller's `WAITING_MAX` waiting calls, taken before the
        request is opened (a refused call opens nothing)."""
        if not wait:
            yield
            return
        holder = _holder(source)
        if self._waiting[holder] >= WAITING_MAX:
            raise ToolError(
                f"{WAITING_MAX} of your calls are waiting already: ask with wait false "
                "and look with get_answer(handle)"
            )
        self._waiting[holder] += 1
        try:
            yield
        finally:
            self._waiting[holder] -= 1
            if not self._waiting[holder]:
                del self._waiting[holder]

    async def _answer(self, thread_id: str, ctx: Context, wait: bool) -> RequestState:
        return await self._follow(thread_id, ctx) if wait else self._state(thread_id)

    async def _follow(self, thread_id: str, ctx: Context) -> RequestState:
        """Until the request is settled (or the bot closes), telling the
        client every `progress_every` seconds that it still waits."""
        began = time.monotonic()
        await self._progress(ctx, thread_id, began)
        watch = self._watch(thread_id)
        try:
            while True:
                state = self._state(thread_id)  # read once the watch is made: nothing is missed
                if state.status != "waiting":
                    return state
                news = True
                with anyio.move_on_after(self.progress_every) as waited:
                    news = await _news(watch)
                if waited.cancelled_caught:
                    await self._progress(ctx, thread_id, began)
                elif not news and watch.lost:
                    watch = self._watch(thread_id)  # fell behind: look again from now
                elif not news:
                    return self._state(thread_id)  # the bot is closing
        finally:
            watch.close()

    def _watch(self, thread_id: str) -> Watch:
        row = self.bot.thread_row(thread_id)
        return self.bot.watch(thread_id, after=row.last_seq if row else -1)

    async def _progress(self, ctx: Context, thread_id: str, began: float) -> None:
        waited = time.monotonic() - began
        row = self.bot.thread_row(thread_id)
        what = row.waiting if row is not None and row.waiting else "a person"
        await ctx.report_progress(
            round(waited, 1), message=f"waiting for {what} (handle {thread_id})"
        )

    def _state(self, thread_id: str) -> RequestState:
        """The request's state, read from its thread as the HTTP API shows it."""
        body = self.bot.get(thread_id).json()
        events: list[dict[str, Any]] = body["events"]
        status = body["status"]
        call = next((e for e in events if e["type"] == "tool_call"), None)
        call_id = call["call_id"] if call is not None else None
        reached = {ch: list(ids) for ch, ids in ((call or {}).get("reach") or {}).items()}
        for e in events:
            if e["type"] == "human_response" and e["call_id"] == call_id:
                return RequestState(
                    handle=thread_id,
                    reached=reached,
                    status="answered",
                    answer=e["text"],
                    option=e.get("option"),
                    **_who(e),
                )
            if e["type"] == "approval" and e["call_id"] == call_id:
                approved = bool(e["approved"])
                return RequestState(
                    handle=thread_id,
                    reached=reached,
                    status="approved" if approved else "rejected",
                    approved=approved,
                    comment=e.get("comment"),
                    **_who(e),
                )
            if e["type"] == "cancelled":
                return RequestState(
                    handle=thread_id,
                    reached=reached,
                    status="cancelled",
                    comment=e.get("reason"),
                    **_who(e),
                )
        return RequestState(
            handle=thread_id, reached=reached, status="failed" if status == "failed" else "waiting"
        )


def _sessions_owned(app: ASGIApp) -> ASGIApp:
    """The SDK ties an MCP session to the user that opened it, and answers
    anyone else as if it did not exist: the user here is the authenticated
    identity, so one token cannot use or end another's session."""

    async def owned(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            who = identity_of(scope).who
            token = AccessToken(token="", client_id=who, scopes=[], subject=who)
            scope = {**scope, "user": AuthenticatedUser(token)}
        await app(scope, receive, send)

    return owned


def _holder(source: Source) -> str:
    """Whose a waiting call is: one authenticated identity."""
    return f"{source.auth}:{source.person or source.user or source.name}"


def _who(event: dict[str, Any]) -> dict[str, Any]:
    source = event.get("source") or {}
    by = source.get("name") or source.get("user") or source.get("channel")
    return {"by": by, "via": source.get("auth"), "at": event.get("ts")}


async def _news(watch: Watch) -> bool:
    """Until the watched thread changes (True), or the watch ends (False)."""
    async for _ in watch:
        watch.ready()  # whatever else came with it
        return True
    return False
