"""Webhooks waiting to be sent, and every attempt at sending them.

The rows are written with the append that caused them (`OutboxRow`, handed
to `append`/`create`); this is the sender's side: find what is due, claim
it (so that two processes on one database do not both send it), record how
an attempt went. Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Store

__all__ = ["Attempt", "Due", "Outbox"]


@dataclass(frozen=True, slots=True)
class Due:
    id: str
    url: str
    type: str
    thread_id: str
    payload: str
    attempts: int
    """Attempts made so far."""
    created_at: float
    next_at: float


@dataclass(frozen=True, slots=True)
class Attempt:
    id: str
    url: str
    type: str
    thread_id: str
    attempt: int
    at: float
    status: int | None
    """The receiver's HTTP status; None when no answer came."""
    error: str | None
    duration: float
    state: str
    """The webhook's state now: pending, delivered or failed."""


_DUE = (
    "SELECT id, url, type, thread_id, payload, attempts, created_at, next_at FROM webhook_outbox "
    "WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?"
)


class Outbox:
    def __init__(self, store: Store) -> None:
        self.db = store

    def due(self, now: float, *, limit: int = 100) -> list[Due]:
        """Webhooks due by `now` (not claimed, or their claim ran out), oldest first."""
        return [Due(*r) for r in self.db.execute(_DUE, [now, limit]).fetchall()]

    def next_at(self) -> float | None:
        """When the next pending webhook is due."""
        row = self.db.execute(
            "SELECT min(next_at) FROM webhook_outbox WHERE state = 'pending'"
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def claim(self, due: Due, owner: str, until: float) -> bool:
        """Take `due` for sending until `until`; False if another sender took
        it since it was read."""
        cursor = self.db.execute(
            "UPDATE webhook_outbox SET next_at = ?, claimed_by = ? "
            "WHERE id = ? AND url = ? AND state = 'pending' AND next_at = ? AND attempts = ?",
            [until, owner, due.id, due.url, due.next_at, due.attempts],
        )
        return cursor.rowcount == 1

    def record(
        self,
        due: Due,
        *,
        at: float,
        status: int | None,
        error: str | None,
        duration: float,
        state: str,
        next_at: float,
    ) -> None:
        """Log an attempt and set what follows it: `state` delivered, failed
        (given up) or pending again from `next_at`."""
        attempt = due.attempts + 1
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO webhook_attempts (id, url, attempt, at, status, error, duration) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id, url, attempt) DO NOTHING",
                [due.id, due.url, attempt, at, status, error, duration],
            )
            self.db.execute(
                # Only the attempt that was claimed: one that outlived its
                # claim must not undo what a later attempt recorded.
                "UPDATE webhook_outbox SET attempts = ?, state = ?, next_at = ?, "
                "claimed_by = NULL WHERE id = ? AND url = ? AND attempts = ? AND state = 'pending'",
                [attempt, state, next_at, due.id, due.url, due.attempts],
            )

    def prune(self, before: float) -> int:
        """Forget the webhooks made before `before` that are delivered or
        given up, with their attempts; returns how many."""
        with self.db.atomic():
            self.db.execute(
                "DELETE FROM webhook_attempts WHERE (id, url) IN (SELECT id, url "
                "FROM webhook_outbox WHERE state <> 'pending' AND created_at < ?)",
                [before],
            )
            cursor = self.db.execute(
                "DELETE FROM webhook_outbox WHERE state <> 'pending' AND created_at < ?",
                [before],
            )
        return int(cursor.rowcount)

    def claimants(self) -> list[str]:
        """The senders holding claims on pending webhooks."""
        rows = self.db.execute(
            "SELECT DISTINCT claimed_by FROM webhook_outbox "
            "WHERE state = 'pending' AND claimed_by IS NOT NULL"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def release(self, owner: str, now: float) -> int:
        """Make the webhooks `owner` (a sender that is gone) claimed due
        again now; returns how many."""
        cursor = self.db.execute(
            "UPDATE webhook_outbox SET next_at = ?, claimed_by = NULL "
            "WHERE state = 'pending' AND claimed_by = ?",
            [now, owner],
        )
        return int(cursor.rowcount)

    def attempts(self, *, limit: int = 50, thread_id: str | None = None) -> list[Attempt]:
        """The latest attempts, newest first (of one thread's webhooks)."""
        where = "WHERE o.thread_id = ?" if thread_id is not None else ""
        params: list[object] = [thread_id] if thread_id is not None else []
        rows = self.db.execute(
            "SELECT a.id, a.url, o.type, o.thread_id, a.attempt, a.at, a.status, a.error, "
            "a.duration, o.state FROM webhook_attempts a "
            "JOIN webhook_outbox o ON o.id = a.id AND o.url = a.url "
            f"{where} ORDER BY a.at DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [Attempt(*r) for r in rows]

    def pending(self) -> list[Due]:
        """Every webhook not yet delivered nor given up, soonest due first."""
        return [Due(*r) for r in self.db.execute(_DUE, [float("inf"), 1_000_000]).fetchall()]
