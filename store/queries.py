"""The statements both stores run, written once with `?` placeholders
(the PostgreSQL store turns them into `%s`), and the reads built on them."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from .rows import THREAD_COLUMNS, OutboxRow, ThreadRow, now_iso

__all__ = [
    "ACQUIRE",
    "APPEND_PROJECTION",
    "FIND_KEY",
    "INSERT_EVENT",
    "INSERT_OUTBOX",
    "INSERT_THREAD",
    "PING",
    "RELEASE",
    "Reads",
    "acquire_params",
    "append_params",
    "outbox_params",
    "thread_params",
]

INSERT_THREAD = f"INSERT INTO threads ({THREAD_COLUMNS}, deliver_to) VALUES ({','.join('?' * 13)})"

APPEND_PROJECTION = (
    "UPDATE threads SET status = ?, updated_at = ?, last_seq = ?, deliver_to = ?, "
    "waiting = ?, due_at = ?, overdue_at = ? WHERE id = ? AND last_seq = ?"
)
"""An append's change to its thread's row: it matches only while the thread's
last seq is the one the writer read, which is what makes an append optimistic."""

INSERT_EVENT = "INSERT INTO events (thread_id, seq, type, key, body) VALUES (?,?,?,?,?)"

INSERT_OUTBOX = (
    "INSERT INTO webhook_outbox (id, url, type, thread_id, seq, payload, created_at, next_at) "
    "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (id, url) DO NOTHING"
)
"""A webhook to send, due at once; stored once whatever asks again."""

ACQUIRE = (
    "INSERT INTO leases (thread_id, owner, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (thread_id) DO UPDATE SET owner = excluded.owner, "
    "expires_at = excluded.expires_at "
    "WHERE leases.owner = excluded.owner OR leases.expires_at < ? OR leases.owner = ?"
)
"""Take a free or expired lease, renew one's own, or take a dead owner's."""

RELEASE = "DELETE FROM leases WHERE thread_id = ? AND owner = ?"

FIND_KEY = "SELECT thread_id, seq FROM events WHERE key = ?"

COUNT_BY_STATUS = "SELECT status, count(*) FROM threads GROUP BY status"

PING = "SELECT count(*) FROM meta"
"""What a readiness check reads: a small table every database has."""


def thread_params(
    thread_id: str,
    last_seq: int,
    *,
    status: str,
    title: str,
    origin: str,
    parent: tuple[str, int] | None = None,
    deliver_to: str = "",
    waiting: str = "",
    due_at: float | None = None,
    overdue_at: float | None = None,
) -> list[Any]:
    """`INSERT_THREAD`'s values for a new thread and its projection."""
    now = now_iso()
    return [
        thread_id,
        status,
        title,
        origin,
        now,
        now,
        last_seq,
        parent[0] if parent else None,
        parent[1] if parent else None,
        waiting,
        due_at,
        overdue_at,
        deliver_to,
    ]


def append_params(
    thread_id: str,
    expected_seq: int,
    last_seq: int,
    *,
    status: str,
    deliver_to: str = "",
    waiting: str = "",
    due_at: float | None = None,
    overdue_at: float | None = None,
) -> list[Any]:
    """`APPEND_PROJECTION`'s values."""
    return [
        status,
        now_iso(),
        last_seq,
        deliver_to,
        waiting,
        due_at,
        overdue_at,
        thread_id,
        expected_seq - 1,
    ]


def outbox_params(rows: Sequence[OutboxRow]) -> list[tuple[Any, ...]]:
    """`INSERT_OUTBOX`'s values, one tuple per row."""
    now = time.time()
    return [(r.id, r.url, r.type, r.thread_id, r.seq, r.payload, now, now) for r in rows]


def acquire_params(thread_id: str, owner: str, ttl: float, steal_from: str | None) -> list[Any]:
    now = time.time()
    return [thread_id, owner, now + ttl, now, steal_from or ""]


class Reads:
    """The reads of the log and its projection; a store supplies `_rows`
    and `_one`, which run a statement with `?` placeholders."""

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def load(self, thread_id: str, *, upto: int | None = None) -> list[str]:
        """The thread's event bodies in seq order (through `upto`, inclusive)."""
        last = 2**31 - 1 if upto is None else min(upto, 2**31 - 1)
        sql = "SELECT body FROM events WHERE thread_id = ? AND seq <= ? ORDER BY seq"
        return [row[0] for row in self._rows(sql, [thread_id, last])]

    def load_from(self, thread_id: str, seq: int) -> list[str]:
        """The bodies from `seq` on: what another writer added since."""
        return [
            row[0]
            for row in self._rows(
                "SELECT body FROM events WHERE thread_id = ? AND seq >= ? ORDER BY seq",
                [thread_id, seq],
            )
        ]

    def events_from(self, thread_id: str, seq: int) -> list[tuple[str, str]]:
        """`(type, body)` of each event from `seq` on, in order."""
        return [
            (row[0], row[1])
            for row in self._rows(
                "SELECT type, body FROM events WHERE thread_id = ? AND seq >= ? ORDER BY seq",
                [thread_id, seq],
            )
        ]

    def thread(self, thread_id: str) -> ThreadRow | None:
        row = self._one(f"SELECT {THREAD_COLUMNS} FROM threads WHERE id = ?", [thread_id])
        return ThreadRow(*row) if row else None

    def threads(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        before: str | None = None,
        overdue_by: float | None = None,
        due_first: bool = False,
    ) -> list[ThreadRow]:
        """Threads by most recent activity (or, with `due_first`, those with
        a timer first, soonest due), optionally of one status, optionally
        only those late by `overdue_by` (Unix time)."""
        where: list[str] = []
        params: list[str | int | float] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if before is not None:
            where.append("updated_at < ?")
            params.append(before)
        if overdue_by is not None:
            where.append("overdue_at <= ?")
            params.append(overdue_by)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "due_at IS NULL, due_at, updated_at DESC" if due_first else "updated_at DESC"
        sql = f"SELECT {THREAD_COLUMNS} FROM threads {clause} ORDER BY {order} LIMIT ?"
        return [ThreadRow(*r) for r in self._rows(sql, [*params, limit])]

    def status_counts(self) -> dict[str, int]:
        """How many threads have each status (an index-only scan)."""
        return {r[0]: int(r[1]) for r in self._rows(COUNT_BY_STATUS)}

    def least_recently_updated(self, status: str) -> str | None:
        """The `updated_at` of the thread of this status that changed least
        recently (one look into the status index)."""
        row = self._one("SELECT min(updated_at) FROM threads WHERE status = ?", [status])
        return str(row[0]) if row and row[0] is not None else None

    def all_thread_ids(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT id FROM threads ORDER BY id")]

    def thread_ids(self, *, status: str) -> list[str]:
        return [r[0] for r in self._rows("SELECT id FROM threads WHERE status = ?", [status])]

    def undelivered_ids(self, channels: Iterable[str]) -> list[str]:
        """Threads that hold something undelivered for one of `channels`."""
        names = list(channels)
        if not names:
            return []
        like = " OR ".join("deliver_to LIKE ?" for _ in names)
        sql = f"SELECT id FROM threads WHERE deliver_to != '' AND ({like})"
        return [r[0] for r in self._rows(sql, [f"% {n} %" for n in names])]

    def due_ids(self, now: float, *, limit: int = 1000) -> list[str]:
        """Threads with a timer due by `now`, the most overdue first."""
        sql = "SELECT id FROM threads WHERE due_at <= ? ORDER BY due_at LIMIT ?"
        return [r[0] for r in self._rows(sql, [now, limit])]

    def next_due(self, now: float) -> float | None:
        """When the next timer after `now` is due, of any thread."""
        row = self._one("SELECT min(due_at) FROM threads WHERE due_at > ?", [now])
        return row[0] if row else None

    def find_key(self, key: str) -> tuple[str, int] | None:
        row = self._one(FIND_KEY, [key])
        return (row[0], row[1]) if row else None

    def route(self, ref: str) -> str | None:
        row = self._one("SELECT thread_id FROM routes WHERE ref = ?", [ref])
        return row[0] if row else None

    def note(self, thread_id: str, channel: str) -> str | None:
        """A channel's note about a thread (`keep_note`), if it keeps one."""
        row = self._one(
            "SELECT value FROM notes WHERE thread_id = ? AND channel = ?", [thread_id, channel]
        )
        return str(row[0]) if row else None

    def lease_owner(self, thread_id: str) -> str | None:
        row = self._one(
            "SELECT owner FROM leases WHERE thread_id = ? AND expires_at >= ?",
            [thread_id, time.time()],
        )
        return str(row[0]) if row else None
