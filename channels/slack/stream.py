"""Work in progress, shown in Slack: the reply streamed into its thread as
the model writes it, and the agent's status in assistant threads.

The core calls `show` on the agent's loop with the pieces of a reply
(`Delta`), its end (`Delta(done=True)`, once it is stored or failed) and what
the agent is doing (`Activity`). Each thread's news is handled in order by a
task of its own, so `show` never waits for Slack:

- The first piece starts a message with `chat.startStream` under the
  person's message at once; later pieces are gathered and sent with
  `chat.appendStream` every `FLUSH_EVERY` seconds, not once per word. Slack
  allows about 100 appends a minute per workspace: with several streams
  open in one workspace, each waits that much longer between its appends.
  At the end the stream is stopped with `chat.stopStream`, marked as the
  post of that reply.
- When the answer is then delivered, the streamed message is the answer: its
  ts is the delivery, and nothing is posted again (if what was shown differs
  from the stored answer, it is updated to say the answer).
- A reply that turned out to be tool calls keeps what the model wrote before
  them as a finished message of its own; one cut off by a model error stays
  as far as it got, and the retry streams anew.
- Where Slack refuses streaming (a workspace or a kind of conversation
  without it), the refusal is remembered for that workspace and kind of
  conversation, and answers are posted whole, as before.
- While a stream is open, the thread's note (`ThreadBot.keep_note`) names
  its message. A process that dies mid-stream leaves it open; the next one
  finds the note when the thread goes on and closes the message: it becomes
  the answer if the reply had been stored, else it says it was interrupted
  and the answer follows.

In assistant threads (Slack's agent surface), the status under the thread
says what the agent is doing (`assistant.threads.setStatus`), cleared when it
stops; elsewhere the 👀 reaction on the person's message says it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.errors import SlackApiError

from bot import Activity, Answer, Delivery, Delta, News, Notice, Source, ThreadBot

from . import format as fmt
from .outbound import SlackPoster
from .settings import bare, team_of
from .web import WebClients

__all__ = ["INTERRUPTED", "Streams", "is_assistant"]

log = logging.getLogger("threadbot.slack")

FLUSH_EVERY = 0.6
"""Seconds after which what was gathered is sent anyway (100 appends a
minute), times the streams open in the workspace."""
STREAM_MAX = 11_000
"""Characters streamed into one message at most (Slack takes 12,000 per
call); the rest of a longer answer comes with its delivery."""
REFUSALS = frozenset(
    {
        "not_allowed",
        "unknown_method",
        "feature_not_enabled",
        "invalid_arguments",
        "channel_type_not_supported",
        "missing_recipient_team_id",
        "missing_recipient_user_id",
        "not_allowed_token_type",
    }
)
"""What Slack answers `chat.startStream` with where streaming is not available."""
INTERRUPTED = "(interrupted — the answer follows)"
NOTE = "slack"
"""The channel name the stream's note is kept under."""


def is_assistant(origin: Source) -> bool:
    """Whether the thread lives in one of Slack's assistant threads."""
    return origin.refs.get("assistant") == "1"


@dataclass
class _Stream:
    seq: int
    channel: str
    root: str
    recipient: dict[str, str]
    """Outside a direct message Slack streams to one person: who and their workspace."""
    ts: str | None = None
    sent: list[str] = field(default_factory=list)
    """What reached the message, as sent (escaped)."""
    size: int = 0
    buffer: str = ""
    last: float = 0.0
    whole: bool = True
    """Everything the model wrote reached the message."""
    dead: bool = False
    """Slack refused or lost the stream: the rest is left to the delivery."""
    kind: str = ""
    team: str = ""
    open: bool = False
    """Started and not yet stopped (counted among its workspace's open streams)."""

    @property
    def text(self) -> str:
        return "".join(self.sent)


@dataclass
class _Thread:
    queue: asyncio.Queue[tuple[News, Source]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    stream: _Stream | None = None
    finished: _Stream | None = None
    """The last stream stopped, until its answer is delivered (or not)."""
    status: str = ""


class Streams:
    def __init__(self, bot: ThreadBot, web: WebClients, poster: SlackPoster) -> None:
        self.bot = bot
        self.web = web
        self.poster = poster
        self._threads: dict[str, _Thread] = {}
        self._refused: set[str] = set()
        """Workspace and kind of conversation ("T1:C") where Slack does not stream."""
        self._no_status: set[str] = set()
        """Workspaces that refused an assistant status."""
        self._open: dict[str, int] = {}
        """Streams open per workspace: appends share Slack's allowance."""

    def _every(self, s: _Stream) -> float:
        return FLUSH_EVERY * max(1, self._open.get(s.team, 0))

    def _closed(self, s: _Stream) -> None:
        if s.open:
            s.open = False
            self._open[s.team] -= 1
            if not self._open[s.team]:
                del self._open[s.team]

    # -- news from the runner --------------------------------------------------------

    def show(self, news: News, origin: Source) -> None:
        if not isinstance(news, (Delta, Activity)) or not origin.refs.get("channel"):
            return
        if isinstance(news, Activity) and not is_assistant(origin):
            return  # the reaction on the person's message says it
        t = self._threads.get(news.thread_id)
        if t is None:
            t = self._threads[news.thread_id] = _Thread()
        t.queue.put_nowait((news, origin))
        if t.task is None or t.task.done():
            t.task = asyncio.get_running_loop().create_task(self._work(news.thread_id, t))

    def refuses(self, origin: Source) -> bool:
        return _kind(origin) in self._refused

    def no_status(self, origin: Source) -> bool:
        return origin.refs.get("team", "") in self._no_status

    async def _work(self, thread_id: str, t: _Thread) -> None:
        while True:
            s = t.stream
            wait = None
            if s is not None and s.buffer and not s.dead:
                wait = max(0.0, s.last + self._every(s) - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    news, origin = await t.queue.get()
            except TimeoutError:
                if s is not None:
                    try:
                        await self._send(thread_id, s)
                    except Exception:
                        log.exception("thread %s: streaming into Slack failed", thread_id)
                continue
            try:
                await self._handle(thread_id, t, news, origin)
            except Exception:
                what = type(news).__name__
                log.exception("thread %s: showing %s in Slack failed", thread_id, what)
            finally:
                t.queue.task_done()
            if t.queue.empty() and (t.stream is None or not t.stream.buffer):
                if t.stream is None and t.finished is None and not t.status:
                    self._threads.pop(thread_id, None)
                return

    async def _handle(self, thread_id: str, t: _Thread, news: News, origin: Source) -> None:
        if isinstance(news, Activity):
            await self._status(t, origin, news.doing)
            return
        assert isinstance(news, Delta)
        s = t.stream
        if news.done:
            if s is not None and s.seq == news.seq:
                await self._stop(thread_id, s)
                t.stream, t.finished = None, s
            elif s is None:
                # A later reply, with no text: the last one stands as it is,
                # and a message another process left open is closed.
                self._supersede(thread_id, t)
                await self.tidy(thread_id)
            return
        if s is None or s.seq != news.seq:
            if s is not None:
                await self._stop(thread_id, s)
                t.stream, t.finished = None, s
            self._supersede(thread_id, t)
            await self.tidy(thread_id)
            if self.refuses(origin):
                return
            s = t.stream = _stream(news.seq, origin)
        if s.dead or not s.whole:
            return  # the delivery says the rest: a later piece would leave a hole
        # The model's text as text: `<!channel>`, `<@U…>` or `<https://…|label>`
        # it writes are shown, never a notification, a mention or a disguised
        # link (escaping is per character, so a piece may end anywhere).
        piece = fmt.escape(news.text)
        if s.size + len(s.buffer) + len(piece) > STREAM_MAX:
            s.whole = False
            return
        s.buffer += piece
        if s.ts is None or time.monotonic() - s.last >= self._every(s):
            await self._send(thread_id, s)

    async def _send(self, thread_id: str, s: _Stream) -> None:
        """Send what was gathered: the stream's first call starts it."""
        if not s.buffer or s.dead:
            return
        text, s.buffer = s.buffer, ""
        s.last = time.monotonic()
        try:
            if s.ts is None:
                s.ts = await self._start(thread_id, s, text)
                if s.ts is None:
                    return
            else:
                await self.web(s.team).chat_appendStream(
                    channel=s.channel, ts=s.ts, markdown_text=text
                )
        except SlackApiError as e:
            # Stopped by the person, expired, or gone: the answer's delivery
            # makes the message say the whole answer.
            log.warning("thread %s: appending to the stream failed: %s", thread_id, _error(e))
            s.dead, s.whole = True, False
            self._closed(s)
            return
        s.sent.append(text)
        s.size += len(text)

    async def _start(self, thread_id: str, s: _Stream, text: str) -> str | None:
        try:
            started = await self.web(s.team).chat_startStream(
                channel=s.channel,
                thread_ts=s.root,
                markdown_text=text,
                recipient_user_id=s.recipient.get("user"),
                recipient_team_id=s.recipient.get("team"),
            )
        except SlackApiError as e:
            error = _error(e)
            if error in REFUSALS:
                self._refused.add(s.kind)
                log.info("Slack does not stream here (%s): answers are posted whole", error)
            else:
                log.warning("thread %s: starting a stream failed: %s", thread_id, error)
            s.dead, s.whole = True, False
            return None
        ts = str(started["ts"])
        s.open = True
        self._open[s.team] = self._open.get(s.team, 0) + 1
        note = {"seq": s.seq, "channel": s.channel, "ts": ts, "team": s.team}
        self.bot.keep_note(thread_id, NOTE, json.dumps(note))
        return ts

    async def _stop(self, thread_id: str, s: _Stream) -> None:
        """The reply is complete: finish the message, marked as its post."""
        await self._send(thread_id, s)
        if s.ts is None:
            return
        try:
            await self.web(s.team).chat_stopStream(
                channel=s.channel, ts=s.ts, metadata=_metadata(thread_id, s.seq)
            )
        except SlackApiError as e:
            log.warning("thread %s: stopping the stream failed: %s", thread_id, _error(e))
            s.whole = False
        finally:
            self._closed(s)
        # The note stays until the message is known to be the answer, or to
        # be superseded: a crash before that leaves it to the next process.

    def _supersede(self, thread_id: str, t: _Thread) -> None:
        """The last stream was no answer (a preamble to tool calls, or a
        reply that failed): it stays a finished message as it is."""
        if t.finished is not None:
            t.finished = None
            self.bot.keep_note(thread_id, NOTE, None)

    async def _status(self, t: _Thread, origin: Source, doing: str | None) -> None:
        status = ""
        if doing:
            status = f"{doing}…" if doing.startswith("is ") else f"is {doing}…"
        if status == t.status or self.no_status(origin):
            return
        t.status = status
        try:
            await self.web(origin.refs.get("team")).assistant_threads_setStatus(
                channel_id=origin.refs["channel"], thread_ts=origin.refs["thread_ts"], status=status
            )
        except SlackApiError as e:
            self._no_status.add(origin.refs.get("team", ""))
            log.warning("Slack refused the assistant status (%s): reactions show work", _error(e))

    # -- delivery -------------------------------------------------------------------

    async def deliver(self, notice: Notice) -> Delivery | None:
        """The delivery of a notice in a thread that may have a stream: the
        streamed message when it is this answer (None: post as usual)."""
        t = self._threads.get(notice.thread_id)
        if t is not None:
            await t.queue.join()  # what was shown before this notice is done
            s = t.finished
            if s is not None and s.ts and isinstance(notice, Answer) and s.seq == notice.seq:
                t.finished = None
                self.bot.keep_note(notice.thread_id, NOTE, None)
                return await self._answer(notice, s.channel, s.ts, replace=not _same(s, notice))
            self._supersede(notice.thread_id, t)
            if t.stream is not None:
                return None  # the thread is being written to now
        note = self._note(notice.thread_id)
        if note is None:
            return None
        if isinstance(notice, Answer) and note["seq"] == notice.seq:
            # The process before this one streamed this answer and stopped
            # before it finished the message.
            await self._close(note)
            self.bot.keep_note(notice.thread_id, NOTE, None)
            return await self._answer(notice, note["channel"], note["ts"], replace=True)
        await self.tidy(notice.thread_id)
        return None

    async def _answer(self, notice: Answer, channel: str, ts: str, *, replace: bool) -> Delivery:
        # The thread's own conversation (with its workspace, installed into several).
        home = self.poster.home({**notice.origin.refs, "channel": channel})
        if replace:
            first, *rest = fmt.answer_messages(notice.text)
            try:
                await self.web(notice.origin.refs.get("team")).chat_update(
                    channel=channel,
                    ts=ts,
                    text=first[0][:3000],
                    blocks=first[1],
                    metadata=_metadata(notice.thread_id, notice.seq),
                )
            except SlackApiError as e:
                log.warning("could not update the streamed answer: %s", _error(e))
                return await self.poster.deliver(notice)
            if rest:
                root = notice.origin.refs["thread_ts"]
                await self.poster.post(notice, home, root, rest, first_part=1)
        await self.poster.unreact(notice.answers)
        return Delivery(refs=self.poster.refs_of(home, ts))

    def _note(self, thread_id: str) -> dict[str, Any] | None:
        try:
            raw = self.bot.note(thread_id, NOTE)
            note = json.loads(raw) if raw else None
            if note is not None:
                return {
                    "seq": int(note["seq"]),
                    "channel": str(note["channel"]),
                    "ts": str(note["ts"]),
                    "team": str(note.get("team", "")),
                }
        except (ValueError, KeyError, TypeError):
            self.bot.keep_note(thread_id, NOTE, None)
        return None

    async def tidy(self, thread_id: str) -> None:
        """Close a stream another process left open in the thread: it says
        it was interrupted (the reply is asked again, and follows)."""
        note = self._note(thread_id)
        if note is None:
            return
        t = self._threads.get(thread_id)
        if t is not None and note["ts"] in {x.ts for x in (t.stream, t.finished) if x}:
            return  # this process's own
        await self._close(note)
        with contextlib.suppress(SlackApiError):
            await self.web(note["team"]).chat_update(
                channel=note["channel"],
                ts=note["ts"],
                text=INTERRUPTED,
                blocks=[_section(f"_{INTERRUPTED}_")],
                # No longer the post of any reply.
                metadata={"event_type": "threadbot_interrupted", "event_payload": {}},
            )
        self.bot.keep_note(thread_id, NOTE, None)

    async def _close(self, note: dict[str, Any]) -> None:
        # It may have expired, or been stopped by the person: then it is closed.
        with contextlib.suppress(SlackApiError):
            await self.web(note["team"]).chat_stopStream(channel=note["channel"], ts=note["ts"])

    async def close(self) -> None:
        """Stop the threads' tasks (a stream left open is tidied by the next process)."""
        tasks = [t.task for t in self._threads.values() if t.task is not None and not t.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._threads.clear()
        self._open.clear()


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def _kind(origin: Source) -> str:
    """A workspace and kind of conversation (D: direct message, C, G)."""
    return f"{origin.refs.get('team', '')}:{origin.refs.get('channel', ' ')[:1]}"


def _stream(seq: int, origin: Source) -> _Stream:
    refs = origin.refs
    recipient = {}
    if not refs["channel"].startswith("D") and origin.user:
        # Slack's own id, and the person's own workspace (in a channel shared
        # with another workspace, theirs may not be the channel's).
        team = team_of(origin.user) or refs.get("team", "")
        recipient = {"user": bare(origin.user), "team": team}
    return _Stream(
        seq,
        refs["channel"],
        refs["thread_ts"],
        recipient,
        kind=_kind(origin),
        team=refs.get("team", ""),
    )


def _same(s: _Stream, answer: Answer) -> bool:
    """Whether the message shows the whole answer (as it was sent: escaped)."""
    return s.whole and s.text.strip() == fmt.escape(answer.text).strip()


def _metadata(thread_id: str, seq: int) -> dict[str, Any]:
    return {
        "event_type": "threadbot_post",
        "event_payload": {"thread": thread_id, "seq": seq, "part": 0},
    }


def _error(e: SlackApiError) -> str:
    return str(e.response.get("error") or e)
