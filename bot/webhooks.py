"""Signed webhooks: a thread's changes of status, told to other systems.

When an append changes a thread's status, the log stores one outbox row per
configured URL in the same transaction (`webhook_rows`): a webhook exists
exactly when its append does. The sender (`WebhookSender`, on the agent's
loop in `threadbot serve`) posts each one, signed as the Standard Webhooks
specification says (headers `webhook-id`, `webhook-timestamp`,
`webhook-signature`), until the receiver answers 2xx; it tries again with
exponential backoff and gives up after `give_up_after`. Every attempt is
logged (`threadbot webhooks log`).

Delivery is at least once: a process killed while a webhook is on its way
sends it again after the restart, with the same `webhook-id`
(`msg_<thread>_<seq>`), by which receivers drop repeats.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from store import Outbox, OutboxRow, Store
from store.outbox import Due

from .errors import UsageError
from .events import AssistantMessage, Event
from .observe import Observer
from .render import iso_utc, pending_json
from .thread import Status, ThreadState, waiting_summary

__all__ = [
    "EVENT_TYPES",
    "WebhookSender",
    "Webhooks",
    "check_urls",
    "event_type",
    "new_secret",
    "shown",
    "webhook_rows",
]

log = logging.getLogger("threadbot.webhooks")

EVENT_TYPES = (
    "thread.waiting",
    "thread.resumed",
    "thread.done",
    "thread.failed",
    "thread.cancelled",
)

LOOK = 2.0
"""Seconds between looks at the outbox for webhooks that another process
stored (this process's own wake the sender as they are stored)."""

CLAIM_MARGIN = 5.0
"""Seconds a claim outlasts the request's timeout."""

IN_FLIGHT = 16
"""Webhooks sent at once, at most."""

KEEP = 7 * 86400.0
"""Seconds a delivered or given-up webhook stays in the log."""

PRUNE_EVERY = 3600.0
"""Seconds between prunings of the log."""

AGAIN = 0.05
"""Seconds before looking again at webhooks due but not started."""


@dataclass(frozen=True)
class Webhooks:
    """Where webhooks go and how they are signed and retried."""

    urls: tuple[str, ...]
    secret: str
    """`whsec_` and the key in base64, as the Standard Webhooks libraries take it."""
    timeout: float = 10.0
    """Seconds an attempt may take."""
    first_retry: float = 5.0
    """Seconds before the second attempt; each later wait doubles."""
    max_retry: float = 3600.0
    """The longest wait between attempts."""
    give_up_after: float = 86400.0
    """Seconds after the event when no more attempts are made."""

    def __post_init__(self) -> None:
        check_urls(self.urls)
        # Strictly: the library decodes loosely, and a receiver with a strict
        # decoder would read another key from a sloppy one.
        prefix, _, key = self.secret.partition("_")
        try:
            size = len(base64.b64decode(key, validate=True))
            Webhook(self.secret)
        except Exception:
            size = 0
        if prefix != "whsec" or not 24 <= size <= 64:
            raise UsageError(
                "the webhook secret must be whsec_ followed by 24 to 64 bytes in base64 "
                "(as `threadbot serve` generates one)"
            )

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`th failed attempt, with jitter (so
        that many webhooks that failed together are not all tried again
        together)."""
        base = min(self.max_retry, self.first_retry * 2.0 ** min(attempts - 1, 30))
        return base * random.uniform(0.8, 1.2)


def check_urls(urls: Sequence[str]) -> None:
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"a webhook URL must be http(s)://…, not {url!r}")


def shown(url: str) -> str:
    """A webhook URL as logs show it: its origin only (a path or query may
    hold a token, as some services' webhook URLs do)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def new_secret() -> str:
    """A random signing secret in the Standard Webhooks form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# -- which webhooks an append makes ----------------------------------------------

_WAITING: tuple[Status, ...] = ("waiting_for_human", "waiting_for_approval", "waiting_for_result")


def event_type(before: Status | None, after: Status) -> str | None:
    """The webhook a change of status from `before` (None: a new thread)
    to `after` makes, if any."""
    if before == after:
        return None
    if after in _WAITING:
        return "thread.waiting"
    if after == "running":
        return "thread.resumed" if before is not None else None
    return f"thread.{after}"


def webhook_rows(
    urls: Sequence[str],
    thread_id: str,
    before: Status | None,
    state: ThreadState,
    events: Sequence[Event],
) -> list[OutboxRow]:
    """The outbox rows of an append that left the thread in `state` (its
    `events` from the first on), one per URL; none if its status did not
    change in a way that makes a webhook."""
    kind = event_type(before, state.status)
    if kind is None or not urls:
        return []
    seq = state.last_seq
    data: dict[str, Any] = {
        "thread_id": thread_id,
        "seq": seq,
        "status": state.status,
        "previous_status": before,
        "title": state.title,
    }
    if state.status in _WAITING:
        data["waiting"] = waiting_summary(state)
        data["pending"] = pending_json(state.pending)
    elif state.status == "done":
        last = events[-1] if events else None
        if isinstance(last, AssistantMessage):
            data["reply"] = last.text
    elif state.status == "failed":
        data["error"] = state.last_error
    last_event = events[-1] if events else None
    at = last_event.ts.timestamp() if last_event is not None else time.time()
    payload = json.dumps(
        {"type": kind, "timestamp": iso_utc(at), "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    msg_id = f"msg_{thread_id}_{seq}"
    return [OutboxRow(msg_id, url, kind, thread_id, seq, payload) for url in urls]


# -- sending ---------------------------------------------------------------------


class WebhookSender:
    """Sends what the outbox holds, on the loop that runs it."""

    def __init__(
        self,
        store: Store,
        settings: Webhooks,
        *,
        owner: str,
        is_gone: Callable[[str], bool],
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.observer = observer or Observer()
        self.outbox = Outbox(store)
        self.store = store
        self.owner = owner
        """This sender, as the holder of claims (the runner's lease name)."""
        self._is_gone = is_gone
        self._signer = Webhook(settings.secret)
        self._wake = asyncio.Event()
        self._pruned_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Look at the outbox now (something was stored)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop sending. A webhook cut off mid-request is let go, to be sent
        again (by another process on the database, or at the next start)."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._task is not None:
            try:
                self.outbox.release(self.owner, time.time())
            except Exception:
                log.exception("letting go of the webhooks being sent failed")
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            started = 0
            try:
                self._prune()
                self._take_back()
                started = self._start_due()
                following = self.outbox.next_at()
            except Exception:
                log.exception("reading the webhook outbox failed; trying again shortly")
                following = None
            if following is None or len(self._sending) >= IN_FLIGHT:
                wait = LOOK  # `_sent` wakes this when a slot frees
            else:
                wait = min(LOOK, following - time.time())
            if wait <= 0 and started:
                await asyncio.sleep(0)  # the agent shares this loop
            else:
                # Until the next is due, or news; never less than AGAIN, so
                # that one due but not startable here is not looked at in a spin.
                wait = max(wait, AGAIN)
                # Not asyncio.wait_for: on Python 3.11 it loses a cancellation
                # that comes as the event is set, and `stop` would wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at >= PRUNE_EVERY:
            self._pruned_at = now
            n = self.outbox.prune(now - KEEP)
            if n:
                log.info("%d webhook(s) older than %d days left the log", n, KEEP // 86400)

    def _take_back(self) -> None:
        """Webhooks claimed by a sender that died (a killed process) are due
        again at once, rather than when its claims run out."""
        for owner in self.outbox.claimants():
            if owner != self.owner and self._is_gone(owner):
                n = self.outbox.release(owner, time.time())
                log.info("%d webhook(s) left by %s sent again", n, owner)

    def _start_due(self) -> int:
        """Start sending what is due, as far as there are free slots; returns
        how many were started."""
        room = IN_FLIGHT - len(self._sending)
        if room <= 0:
            return 0
        started = 0
        now = time.time()
        until = now + self.settings.timeout + CLAIM_MARGIN
        for due in self.outbox.due(now, limit=room):
            if due.url not in self.settings.urls:
                # The operator took this URL out: it gets nothing more.
                self.outbox.record(
                    due,
                    at=now,
                    status=None,
                    error="not sent: the URL is no longer in THREADBOT_WEBHOOKS",
                    duration=0.0,
                    state="failed",
                    next_at=now,
                )
                log.warning(
                    "webhook %s to %s dropped: URL no longer configured", due.id, shown(due.url)
                )
                continue
            if not self.outbox.claim(due, self.owner, until):
                continue  # another process's sender took it
            task = asyncio.get_running_loop().create_task(self._send(due))
            self._sending.add(task)
            task.add_done_callback(self._sent)
            started += 1
        return started

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        if task.cancelled():
            return
        if (e := task.exception()) is not None:
            # A bug: the webhook stays claimed until its claim runs out, then is sent again.
            log.error("sending a webhook failed", exc_info=e)
        self._wake.set()  # room for another

    async def _send(self, due: Due) -> None:
        assert self._client is not None
        sent_at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "threadbot-webhooks",
            "webhook-id": due.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(due.id, sent_at, due.payload),
        }
        status: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            # The whole attempt is bounded, not only each read: a receiver
            # that trickles its answer would otherwise outlive its claim.
            async with (
                asyncio.timeout(self.settings.timeout),
                self._client.stream(
                    "POST",
                    due.url,
                    content=due.payload.encode(),
                    headers=headers,
                    timeout=self.settings.timeout,
                ) as response,
            ):
                status = response.status_code
        except TimeoutError:
            status, error = None, f"no answer within {self.settings.timeout:g} s"
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as e:
            error = f"{type(e).__name__}: {e}".rstrip(": ")
        duration = time.monotonic() - started
        now = time.time()
        if status is not None and 200 <= status < 300:
            state, next_at = "delivered", now
        else:
            if error is None:
                error = f"HTTP {status}"
            next_at = now + self.settings.delay(due.attempts + 1)
            late = next_at > due.created_at + self.settings.give_up_after
            state = "failed" if late else "pending"
            log.warning(
                "webhook %s to %s: %s%s",
                due.id,
                shown(due.url),
                error,
                "; given up" if late else f"; again in {next_at - now:.0f} s",
            )
        outcome = {"delivered": "delivered", "failed": "failed"}.get(state, "retrying")
        self.observer.webhook_attempted(outcome, duration)
        try:
            self.outbox.record(
                due,
                at=sent_at.timestamp(),
                status=status,
                error=error,
                duration=duration,
                state=state,
                next_at=next_at,
            )
        except Exception:
            # Not recorded: its claim runs out and it is sent again.
            log.exception("recording webhook %s failed", due.id)
