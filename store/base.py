"""What the rest of threadbot may ask of a store, whichever database it is.

Two stores implement it: `EventStore` (SQLite, one file, the default) and
`PostgresStore` (one database shared by replicas on several hosts). A store
object belongs to the thread that uses it; `reopen` gives another thread a
store of its own on the same database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .rows import NewRow, ThreadRow

__all__ = ["Cursor", "Store"]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Store(Protocol):
    url: str
    """Where the data is: a SQLite path or a PostgreSQL URL (as given)."""

    def reopen(self) -> Store:
        """A store of its own on the same database, for another thread."""
        ...

    def close(self) -> None: ...

    # -- the log ----------------------------------------------------------------
    def create(self, thread_id: str, rows: Sequence[NewRow], **projection: Any) -> None: ...
    async def create_async(
        self, thread_id: str, rows: Sequence[NewRow], **projection: Any
    ) -> None: ...
    def append(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int: ...
    async def append_async(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int: ...
    def rewrite_projection(
        self,
        thread_id: str,
        last_seq: int,
        *,
        status: str,
        title: str,
        deliver_to: str = "",
        waiting: str = "",
        due_at: float | None = None,
        overdue_at: float | None = None,
    ) -> bool: ...
    def changed_elsewhere(self) -> bool: ...
    def load_json(self, thread_id: str) -> bytes | None: ...
    def load(self, thread_id: str, *, upto: int | None = None) -> list[str]: ...
    def load_from(self, thread_id: str, seq: int) -> list[str]: ...
    def events_from(self, thread_id: str, seq: int) -> list[tuple[str, str]]: ...

    # -- the projection ------------------------------------------------------------
    def all_thread_ids(self) -> list[str]: ...
    def thread(self, thread_id: str) -> ThreadRow | None: ...
    def threads(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        before: str | None = None,
        overdue_by: float | None = None,
        due_first: bool = False,
    ) -> list[ThreadRow]: ...
    def undelivered_ids(self, channels: Iterable[str]) -> list[str]: ...
    def due_ids(self, now: float, *, limit: int = 1000) -> list[str]: ...
    def next_due(self, now: float) -> float | None: ...
    def thread_ids(self, *, status: str) -> list[str]: ...
    def find_key(self, key: str) -> tuple[str, int] | None: ...
    def route(self, ref: str) -> str | None: ...
    def meta(self, key: str, default: str) -> str: ...
    def status_counts(self) -> dict[str, int]: ...
    def least_recently_updated(self, status: str) -> str | None: ...
    def ping(self, timeout: float) -> None:
        """Read the database on a connection of its own, opened now, giving
        up after about `timeout` seconds; raises if it cannot. Safe to call
        from any thread."""
        ...

    # -- a channel's note about a thread (not part of the thread) -------------------
    def note(self, thread_id: str, channel: str) -> str | None: ...
    def keep_note(self, thread_id: str, channel: str, value: str | None) -> None:
        """Write (None: remove) the note, without the durability of an append."""
        ...

    # -- leases: which runner runs a thread -----------------------------------------
    def acquire(
        self, thread_id: str, owner: str, ttl: float, *, steal_from: str | None = None
    ) -> bool: ...
    async def acquire_async(self, thread_id: str, owner: str, ttl: float) -> bool: ...
    def lease_owner(self, thread_id: str) -> str | None: ...
    def release(self, thread_id: str, owner: str) -> None: ...
    async def release_async(self, thread_id: str, owner: str) -> None: ...
    def renew_all(self, owner: str, ttl: float) -> set[str]: ...
    def release_all(self, owner: str) -> None: ...

    # -- runners on several hosts -------------------------------------------------
    takeover_every: float | None
    """Seconds between looks for threads whose runner died elsewhere (None:
    the store is not shared between hosts; a restart resumes them)."""

    def hold_presence(self, owner: str) -> None:
        """Make `owner` (a runner) known to be alive for as long as this
        process is, to runners on other hosts."""
        ...

    def owner_gone(self, owner: str) -> bool | None:
        """Whether the runner `owner` is known to be gone; None when the
        store cannot tell (the caller judges by pid on this host)."""
        ...

    def orphans(self, owner: str, channels: Iterable[str]) -> list[str]:
        """Threads with work left (running, or undelivered on `channels`)
        that no live runner holds: `owner` (the caller) may take them."""
        ...

    async def listen(self, notify: Callable[[str, float | None], None]) -> None:
        """Call `notify(thread_id, due_at)` whenever another connection
        changes a thread or frees its lease, until cancelled; returns at once
        if the store has no such notifications."""
        ...

    # -- rows beside the log (credentials) ----------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement written with `?` placeholders."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement (with `?` placeholders) once per row."""
        ...

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction around the statements run inside it."""
        ...

    def snapshot(self) -> AbstractContextManager[Any]:
        """Reads inside it all see the database as it was at its first read."""
        ...
