"""What every store takes and gives: rows to append, a thread's projection,
the time stamps on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["THREAD_COLUMNS", "NewRow", "OutboxRow", "ThreadRow", "now_iso"]


@dataclass(frozen=True, slots=True)
class NewRow:
    type: str
    body: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A webhook to send, stored with the append that caused it."""

    id: str
    """The same for every attempt (and every URL): receivers deduplicate by it."""
    url: str
    type: str
    thread_id: str
    seq: int
    payload: str
    """The JSON body, exactly as it is signed and sent."""


@dataclass(frozen=True, slots=True)
class ThreadRow:
    id: str
    status: str
    title: str
    origin: str
    created_at: str
    updated_at: str
    last_seq: int
    parent_id: str | None
    parent_seq: int | None
    waiting: str = ""
    """What the thread waits for, in a few words (empty when it does not)."""
    due_at: float | None = None
    """When its next reminder, escalation or deadline is due (Unix time)."""
    overdue_at: float | None = None
    """When what it waits for became (or becomes) late: its first timer."""


THREAD_COLUMNS = (
    "id, status, title, origin, created_at, updated_at, last_seq, parent_id, parent_seq, waiting, "
    "due_at, overdue_at"
)


_stamp: tuple[int, str] = (0, "")


def now_iso(at: float | None = None) -> str:
    """The time (now, or `at` in Unix seconds) in ISO 8601 to the
    millisecond; now is formatted once per millisecond (a batch of appends
    shares a few)."""
    global _stamp
    if at is not None:
        return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    ms = time.time_ns() // 1_000_000
    if ms != _stamp[0]:
        _stamp = (ms, datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds"))
    return _stamp[1]
