"""The HTTP API: launch, read, list, answer, approve, post results, continue, fork.

JSON in and out, with an OpenAPI schema at /openapi.json (no docs pages: they
load scripts from a CDN). Errors are JSON `{"error": message}`: 404 unknown
thread or route, 409 not waiting for that (or already answered, saying by
whom), 403 not allowed, 400 or 422 invalid body, 401 bad token; channels/guard.py
refuses some requests before they get here, in the same shape.
An `Idempotency-Key` header makes any POST safe to retry: a repeat writes
nothing and returns the original result.

A thread's events, and the list of threads, can also be followed as they
change: `GET /threads/{id}/events` and `GET /threads/events` with `Accept:
text/event-stream` (channels/sse.py).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from bot import (
    AlreadyAnswered,
    Appended,
    Changed,
    News,
    NotAllowed,
    Receipt,
    Refused,
    Source,
    Status,
    ThreadBot,
    ThreadNotFound,
    ThreadRow,
    UsageError,
    iso_utc,
)

from .auth import Authenticate, Identity, identity_of, still_valid
from .guard import BodyRules, Guard
from .sse import Busy, EventStream, Streams, ThreadFeed, frame, wants_stream, with_seq
from .web import OPEN_PATHS

__all__ = ["create_app", "protect"]

TEXT_MAX = 65_536
"""Characters in a message or an answer: a long paste fits, a flood does not
(the whole body is capped in bytes by channels/guard.py as well)."""
COMMENT_MAX = 4_000
"""A rejection's reason: a few paragraphs for the model to read."""
NAME_MAX = 200
"""Who answered, and call ids (the model's are a few dozen characters)."""
OPTION_MAX = 1_000

Text = Annotated[str, Field(min_length=1, max_length=TEXT_MAX)]
Name = Annotated[str, Field(max_length=NAME_MAX)]

StatusName = Status


class LaunchIn(BaseModel):
    text: Text
    user: Name | None = Field(None, description="Who is asking, for the thread's audit trail.")


class Created(BaseModel):
    id: str
    status: StatusName


class Summary(BaseModel):
    id: str
    status: StatusName
    title: str
    updated_at: str
    created_at: str
    origin: str = Field(description="The channel the thread started in: http, slack, email, cli.")
    waiting: str = Field(description="What it waits for, in a few words; empty if nothing.")
    parent_id: str | None = None
    due_at: str | None = Field(
        None, description="When its next reminder, escalation or deadline is due (ISO 8601, UTC)."
    )
    overdue_at: str | None = Field(
        None, description="When what it waits for is late: its first reminder or deadline."
    )


class Pending(BaseModel):
    call_id: str
    kind: Literal["question", "approval", "result"]
    seq: int
    question: str | None = None
    options: list[str] | None = None
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    approvers: list[str] | None = Field(
        None, description="Who may decide, as they stand after any escalation."
    )
    allowed: bool = Field(description="Whether the caller may settle it.")
    deciders: list[str] | None = Field(
        None, description="An approval's deciders by name; empty when the starter or admins decide."
    )
    deadline: str | None = Field(None, description="When it is settled if nobody has (ISO 8601).")
    remind_at: str | None = Field(None, description="When the reminder goes out, if it has not.")
    approvals_required: int | None = Field(
        None, description="How many different people must approve, when more than one."
    )
    approved_by: list[str] | None = Field(None, description="Who approved so far.")


class ThreadOut(BaseModel):
    id: str
    status: StatusName
    title: str
    pending: Pending | None = Field(description="The earliest open call.")
    pending_calls: list[Pending] = Field(
        description="Every open call waiting for a person or a result, each settled on its own."
    )
    events: list[dict[str, Any]]


class RespondIn(BaseModel):
    text: Text
    call_id: Name | None = Field(None, description="The question answered; the open one if unset.")
    option: str | None = Field(None, max_length=OPTION_MAX)
    user: Name | None = None


class ApprovalIn(BaseModel):
    approved: bool | None = Field(
        None, strict=True, description="Approve or reject; leave out with `respond`."
    )
    comment: str | None = Field(
        None, max_length=COMMENT_MAX, description="The reason; the model reads it."
    )
    respond: str | None = Field(
        None,
        min_length=1,
        max_length=TEXT_MAX,
        description="Answer instead of deciding: the call does not run; the model reads this.",
    )
    call_id: Name | None = None
    arguments: dict[str, Any] | None = Field(
        None, description="Run the call with these arguments instead of the model's."
    )
    user: Name | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ApprovalIn:
        if (self.approved is None) == (self.respond is None):
            raise PydanticCustomError(
                "approval", 'give either "approved" (true or false) or "respond" (a text)'
            )
        if self.respond is not None and (self.comment is not None or self.arguments is not None):
            raise PydanticCustomError(
                "approval", '"respond" is the whole answer: it takes no "comment" or "arguments"'
            )
        return self


class CancelIn(BaseModel):
    reason: str | None = Field(
        None, max_length=COMMENT_MAX, description="Why; the thread keeps it."
    )
    user: Name | None = None


class ResultIn(BaseModel):
    call_id: Name
    output: Any
    is_error: bool = Field(False, strict=True)
    user: Name | None = None


class MessageIn(BaseModel):
    text: Text
    user: Name | None = None


class ForkIn(BaseModel):
    at: int = Field(ge=0, le=2**53, strict=True)


class Accepted(BaseModel):
    thread_id: str
    seq: int
    duplicate: bool = Field(description="True when this Idempotency-Key was used before.")


class Forked(BaseModel):
    id: str
    parent_id: str
    at: int


class ErrorOut(BaseModel):
    error: str
    by: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 422)
}


def _key(request: Request, route: str, value: str | None) -> str | None:
    """An Idempotency-Key as stored: one person's retry is a duplicate of
    their own request, never of someone else's that used the same key."""
    if not value:
        return None
    identity = identity_of(request.scope)
    return f"http:{identity.auth}:{identity.person or identity.name}:{route}:{value}"


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

Limit = Annotated[int, Field(ge=1, le=1000)]
Order = Literal["recent", "due"]

SEQ_MAX = 2**53
After = Annotated[
    int | None,
    Query(ge=-1, le=SEQ_MAX, description="The last seq the client has; absent: from the start."),
]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^[0-9]{1,16}$",
        description="The id of the last event received, as a reconnecting EventSource "
        "sends it; it wins over `after`.",
    ),
]


def _stream_doc(what: str) -> dict[int | str, dict[str, Any]]:
    """A route that answers JSON, or an event stream when asked for one."""
    stream = {"schema": {"type": "string", "description": what}}
    busy = "Too many event streams are open, or the server is stopping."
    return {
        200: {"content": {"text/event-stream": stream}},
        503: {"model": ErrorOut, "description": busy},
    }


def _summary(r: ThreadRow) -> dict[str, Any]:
    """A thread as GET /threads lists it (the `Summary` model, as JSON)."""
    return {
        "id": r.id,
        "status": r.status,
        "title": r.title,
        "updated_at": r.updated_at,
        "created_at": r.created_at,
        "origin": str(json.loads(r.origin or "{}").get("channel", "")),
        "waiting": r.waiting,
        "parent_id": r.parent_id,
        "due_at": iso_utc(r.due_at),
        "overdue_at": iso_utc(r.overdue_at),
    }


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


SENT_MAX = 1_000
"""Threads an inbox stream remembers having sent (a checksum of each
summary, to send only what changed); past it, it forgets, and a thread's
summary may be sent again unchanged after another process wrote."""


def _fingerprint(summary: str) -> int:
    """A checksum of a thread's summary as sent: what an inbox stream keeps
    of it, to tell whether it changed."""
    return zlib.crc32(summary.encode())


def create_app(bot: ThreadBot, *, streams: Streams | None = None) -> FastAPI:
    """The API app. Requests reach it authenticated (`channels.auth`): each
    route records who that was. `streams`: the cap and heartbeat of event
    streams, and what ends them when the server stops."""
    streams = streams if streams is not None else Streams()

    def who(request: Request, claimed: str | None) -> Source:
        """The authenticated person as the events' source. A body naming
        someone else is refused unless an admin sent it (then both are kept)."""
        identity = identity_of(request.scope)
        if not identity.may_claim(bot.people, claimed):
            raise NotAllowed(
                f'"user" says {claimed!r}, but this request was authenticated as '
                f"{identity.name} ({identity.auth}); only an admin acts for someone else"
            )
        return identity.source(bot.people, claimed)

    def holds(identity: Identity) -> Callable[[], bool] | None:
        """For an event stream: whether the credential it was opened with
        still holds (None for those that last as long as the server)."""
        if identity.secret is None:
            return None
        return lambda: still_valid(bot.credentials, identity)

    def visible(request: Request, thread_id: str) -> None:
        """Threads are shown to admins, and to people who take part in them
        or may settle what they wait for."""
        identity = identity_of(request.scope)
        if not identity.admin and not bot.may_see(thread_id, identity.source(bot.people, None)):
            raise NotAllowed(f"{identity.name} takes no part in thread {thread_id}")

    app = FastAPI(
        title="threadbot",
        version="0.1.0",
        summary="Threads of an agent that pauses for people and resumes where it stopped.",
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own refusals (unknown route, wrong method, an unreadable
        # or oversized body) in the API's shape rather than `{"detail"}`.
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ThreadNotFound)
    async def _not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Exception) -> JSONResponse:
        body: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, AlreadyAnswered):
            body["by"] = exc.by
        return JSONResponse(body, status_code=403 if isinstance(exc, NotAllowed) else 409)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(UsageError)
    async def _usage(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                problems.append("the body is not valid JSON")
                continue
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, status_code=422)

    def accepted(receipt: Receipt) -> Accepted:
        return Accepted(thread_id=receipt.thread_id, seq=receipt.seq, duplicate=receipt.duplicate)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """The process serves (a liveness probe)."""
        return {"status": "ok", "app": "threadbot"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """The store answers and the channels are connected (a readiness
        probe); 503 naming what is not."""
        problems = await bot.not_ready()
        if problems:
            return JSONResponse({"ready": False, "not_ready": problems}, status_code=503)
        return JSONResponse({"ready": True})

    @app.post("/threads", status_code=201, response_model=Created)
    async def launch(
        request: Request, body: LaunchIn, idempotency_key: IdempotencyKey = None
    ) -> Created:
        """Start a thread. The agent runs in the background: poll the thread or list by status."""
        thread_id = await bot.launch(
            body.text, source=who(request, body.user), key=_key(request, "threads", idempotency_key)
        )
        return Created(id=thread_id, status=bot.get(thread_id).state.status)

    def listing(
        request: Request, status: str | None, limit: int, overdue: bool, order: str
    ) -> list[dict[str, Any]]:
        identity = identity_of(request.scope)
        rows = bot.threads(
            status=status,
            limit=limit if identity.admin else 1000,
            overdue_by=time.time() if overdue else None,
            due_first=order == "due",
        )
        if not identity.admin:
            me = identity.source(bot.people, None)
            rows = [r for r in rows if bot.may_see(r.id, me)][:limit]
        return [_summary(r) for r in rows]

    @app.get("/threads", response_model=list[Summary])
    async def list_threads(
        request: Request,
        status: StatusName | None = None,
        limit: Limit = 100,
        overdue: bool = False,
        order: Order = "recent",
    ) -> JSONResponse:
        """Threads by most recent activity (`order=due`: those with a timer
        first, soonest due), optionally of one status; `overdue=true`: only
        those waiting past their first reminder or deadline. All of them for
        an admin, else those the caller takes part in or may settle."""
        return JSONResponse(listing(request, status, limit, overdue, order))

    # Before /threads/{thread_id}, which would take "events" for an id.
    @app.get(
        "/threads/events",
        response_model=list[Summary],
        responses=_stream_doc(
            "`event: threads` with the listing, then `event: thread` with a thread's "
            "summary each time it changes."
        ),
    )
    async def follow_threads(
        request: Request,
        status: StatusName | None = None,
        limit: Limit = 100,
        overdue: bool = False,
        order: Order = "recent",
    ) -> Response:
        """The list of threads as it changes. With `Accept: text/event-stream`:
        first `event: threads`, whose data is what GET /threads returns for
        the same query; then `event: thread` with a thread's summary (as GET
        /threads lists it) whenever one the caller may see changes, whatever
        the query (a thread that no longer matches it is how a client learns
        to drop it). Frames carry no id: a client that reconnects gets the
        listing again. A comment every 15 s keeps a quiet stream open.
        Without that Accept header: the listing, as GET /threads."""
        if not wants_stream(request.headers.get("accept")):
            return JSONResponse(listing(request, status, limit, overdue, order))
        identity = identity_of(request.scope)
        me = identity.source(bot.people, None)
        watch = streams.admit(lambda: bot.watch(None), identity.who, holds(identity))
        try:
            listed = listing(request, status, limit, overdue, order)
        except BaseException:
            streams.release(watch)
            raise
        sent = {t["id"]: _fingerprint(_compact(t)) for t in listed}

        def frames(news: News) -> bytes:
            if isinstance(news, Appended):
                row = bot.thread_row(news.thread_id)
                rows = [row] if row is not None else []
            elif isinstance(news, Changed):
                rows = bot.threads(limit=limit)  # the most recent: what another process wrote
            else:
                return b""
            out = []
            for r in rows:
                if not identity.admin and not bot.may_see(r.id, me):
                    continue
                text = _compact(_summary(r))
                fingerprint = _fingerprint(text)
                if sent.get(r.id) == fingerprint:
                    continue
                if len(sent) >= SENT_MAX:
                    sent.clear()
                sent[r.id] = fingerprint
                out.append(frame("thread", text))
            return b"".join(out)

        return EventStream(streams, watch, frame("threads", _compact(listed)), frames)

    @app.get("/threads/{thread_id}", response_model=ThreadOut)
    async def get_thread(request: Request, thread_id: str) -> JSONResponse:
        """The thread: its status, what it waits for, and every event with its seq.
        `pending.allowed` says whether the caller may settle it, and an
        approval's `pending.deciders` who may."""
        visible(request, thread_id)
        return JSONResponse(bot.thread_json(thread_id, who(request, None)))

    @app.get(
        "/threads/{thread_id}/events",
        response_model=list[dict[str, Any]],
        responses=_stream_doc(
            "Each stored event as `event: <type>`, `id: <seq>`, `data: <the event>`; "
            "`event: delta` and `event: activity` frames without an id."
        ),
    )
    async def follow_thread(
        request: Request, thread_id: str, after: After = None, last_event_id: LastEventId = None
    ) -> Response:
        """The thread's events after `after` (or after `Last-Event-ID`), each
        with its seq, as GET /threads/{id} shows them.

        With `Accept: text/event-stream`, Server-Sent Events: each stored
        event as `event: <type>`, `id: <seq>`, `data: <the event as JSON>`,
        then each new one as it is stored; `event: delta` frames (no id)
        with `{"seq", "text"}`, the reply the model is writing, which is
        stored at that seq, and `{"seq", "text": "", "done": true}` when it
        is complete; `event: activity` frames (no id) with `{"doing": "is
        thinking" | "running <tool>" | null}`; and a comment every 15 s.
        A stream that falls far behind ends: reconnect with the last id
        (EventSource does), and nothing is lost or sent twice.

        Without that Accept header: the events after `after`, as a JSON array."""
        visible(request, thread_id)
        after = int(last_event_id) if last_event_id is not None else after
        start = -1 if after is None else after
        if not wants_stream(request.headers.get("accept")):
            rows = bot.events_after(thread_id, start)
            body = "[" + ",".join(with_seq(seq, text) for seq, _, text in rows) + "]"
            return Response(body, media_type="application/json")
        row = bot.thread_row(thread_id)
        if row is None:
            raise ThreadNotFound(thread_id)
        # No further than the thread goes: the watch of every client of this
        # thread would otherwise wait for seqs that do not exist yet.
        start = min(start, row.last_seq)
        identity = identity_of(request.scope)
        me = identity.source(bot.people, None)
        feed = ThreadFeed(
            start,
            None if identity.admin else lambda: bot.may_see(thread_id, me),
            every=streams.recheck,
        )
        watch = streams.admit(
            lambda: bot.watch(thread_id, after=start), identity.who, holds(identity)
        )
        try:
            first = feed.first(bot.events_after(thread_id, start))
        except BaseException:
            streams.release(watch)
            raise
        return EventStream(streams, watch, first, feed)

    @app.get("/threads/{thread_id}/pending", response_model=Pending | None)
    async def get_pending(request: Request, thread_id: str) -> JSONResponse:
        """What the thread waits for, or null."""
        visible(request, thread_id)
        return JSONResponse(bot.pending_json(thread_id, who(request, None)))

    # A plain `Response` class: its errors are declared as the JSON they are,
    # and only the thread itself as Markdown.
    @app.get(
        "/threads/{thread_id}/markdown",
        response_class=Response,
        responses={200: {"content": {"text/markdown": {"schema": {"type": "string"}}}}},
    )
    async def get_markdown(request: Request, thread_id: str) -> PlainTextResponse:
        """The thread rendered for people."""
        visible(request, thread_id)
        return PlainTextResponse(bot.get(thread_id).markdown(), media_type="text/markdown")

    @app.post("/threads/{thread_id}/responses", status_code=202, response_model=Accepted)
    async def respond(
        request: Request, thread_id: str, body: RespondIn, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Answer the question the agent asked."""
        receipt = await bot.respond(
            thread_id,
            body.text,
            call_id=body.call_id,
            option=body.option,
            source=who(request, body.user),
            key=_key(request, f"{thread_id}:responses", idempotency_key),
        )
        return accepted(receipt)

    @app.post("/threads/{thread_id}/approvals", status_code=202, response_model=Accepted)
    async def approve(
        request: Request, thread_id: str, body: ApprovalIn, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Approve or reject the call waiting for approval, or `respond`
        instead: the call does not run, and the model reads the text."""
        receipt = await bot.decide(
            thread_id,
            bool(body.approved),
            comment=body.comment,
            call_id=body.call_id,
            arguments=body.arguments,
            respond=body.respond,
            source=who(request, body.user),
            key=_key(request, f"{thread_id}:approvals", idempotency_key),
        )
        return accepted(receipt)

    @app.post("/threads/{thread_id}/cancel", status_code=202, response_model=Accepted)
    async def cancel(
        request: Request, thread_id: str, body: CancelIn, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Stop the thread, whatever it waits for (status `cancelled`): its
        open questions and approvals are settled as cancelled; a tool that
        already started keeps an unknown outcome. For whoever may write in
        the thread or settle what it waits for."""
        receipt = await bot.cancel(
            thread_id,
            body.reason,
            source=who(request, body.user),
            key=_key(request, f"{thread_id}:cancel", idempotency_key),
        )
        return accepted(receipt)

    @app.post("/threads/{thread_id}/results", status_code=202, response_model=Accepted)
    async def post_result(
        request: Request, thread_id: str, body: ResultIn, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Post the outcome of a deferred tool call."""
        receipt = await bot.post_result(
            thread_id,
            body.call_id,
            body.output,
            is_error=body.is_error,
            source=who(request, body.user),
            key=_key(request, f"{thread_id}:results", idempotency_key),
        )
        return accepted(receipt)

    @app.post("/threads/{thread_id}/messages", status_code=202, response_model=Accepted)
    async def send(
        request: Request, thread_id: str, body: MessageIn, idempotency_key: IdempotencyKey = None
    ) -> Accepted:
        """Continue the thread with a new message."""
        visible(request, thread_id)
        receipt = await bot.send(
            thread_id,
            body.text,
            source=who(request, body.user),
            key=_key(request, f"{thread_id}:messages", idempotency_key),
        )
        return accepted(receipt)

    @app.post("/threads/{thread_id}/fork", status_code=201, response_model=Forked)
    async def fork(
        request: Request, thread_id: str, body: ForkIn, idempotency_key: IdempotencyKey = None
    ) -> Forked:
        """A new thread with a copy of events 0..at; it goes on from there.

        Retried with the same `Idempotency-Key`, it returns the thread the
        first request made, with 201 again, and makes no other."""
        new_id = await bot.fork(
            thread_id, body.at, key=_key(request, f"{thread_id}:fork", idempotency_key)
        )
        return Forked(id=new_id, parent_id=thread_id, at=body.at)

    return app


def protect(
    app: ASGIApp,
    bot: ThreadBot,
    *,
    hosts: Iterable[str],
    origins: Iterable[str] = (),
    max_bytes: int = 1 << 20,
    admin_token: str | None = None,
    local_operator: bool = False,
    metrics_token: str | None = None,
) -> ASGIApp:
    """The server's layers around the app, outermost first: the Host and
    cross-site checks, authentication (before any body is read), then the
    body's size and type. `metrics_token` opens /metrics, and nothing else."""
    # Slack posts form bodies; it is exempt from the JSON rule, not the size cap.
    inner = BodyRules(app, max_bytes=max_bytes, exempt=("/slack/events",))
    authenticated = Authenticate(
        inner,
        credentials=bot.credentials,
        people=bot.people,
        admin_token=admin_token,
        local_operator=local_operator,
        metrics_token=metrics_token,
        # These authenticate themselves (Slack signs its requests) or hold no data.
        open_paths=(
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/slack/events",
            "/slack/install",
            "/slack/oauth_redirect",
            *OPEN_PATHS,
        ),
        open_prefixes=("/ui/", "/auth/"),
    )
    return Guard(authenticated, hosts=hosts, origins=origins)
