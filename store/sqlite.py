"""The durable event log over SQLite.

Rows are `thread_id, seq, type, key, body` where body is the event's JSON: the
store knows nothing of what events mean. The caller hands in the thread's
projection (status, title) with each append so that both land in one
transaction.

Use one `EventStore` from one thread (the event loop), or open one per thread
of work. `append_async`/`create_async` are committed in batches (see
`writer`). Several processes may share the file: WAL lets readers run
beside the writer, and appends stay correct because each one is checked
against the seq it expected.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from .errors import DuplicateKey, SeqConflict, UnknownThread
from .migrations import migrations
from .queries import (
    ACQUIRE,
    APPEND_PROJECTION,
    FIND_KEY,
    INSERT_EVENT,
    INSERT_OUTBOX,
    INSERT_THREAD,
    PING,
    RELEASE,
    Reads,
    acquire_params,
    append_params,
    outbox_params,
    thread_params,
)
from .rows import NewRow, OutboxRow
from .writer import GroupCommit

__all__ = ["EventStore"]

T = TypeVar("T")

Op = Callable[[sqlite3.Connection], Any]


@contextmanager
def without_fsync(conn: sqlite3.Connection, synchronous: str) -> Iterator[None]:
    """Commits on `conn` skip the fsync meanwhile; then its own setting,
    `synchronous`, is back."""
    conn.execute("PRAGMA synchronous = OFF")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA synchronous = {synchronous}")


def _create_private(path: str) -> None:
    """A new database file is readable and writable by its owner only (its
    -wal and -shm files take the same mode from SQLite): it holds what
    people wrote, and Slack workspaces' tokens. An existing file keeps the
    mode it has."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return  # it exists; or SQLite says why it cannot be opened
    os.close(fd)


class EventStore(Reads):
    takeover_every: float | None = None
    """One file is on one host: a process that dies has its threads resumed
    when it starts again (or by another process on the file, once their
    leases expire)."""

    def __init__(self, path: str | Path, *, durable: bool = True) -> None:
        self.path = str(path)
        self.url = self.path
        self._durable = durable
        if self.path not in ("", ":memory:"):
            _create_private(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db = Database(conn)
        # Another process (the CLI beside a server) may hold the write lock
        # for a moment; wait for it rather than fail.
        self.db.execute("PRAGMA busy_timeout = 5000")
        if self.path != ":memory:":
            self.db.enable_wal()
        # FULL: an acknowledged append survives a power cut, not only a crash.
        self._synchronous = "FULL" if durable else "NORMAL"
        self.db.execute(f"PRAGMA synchronous = {self._synchronous}")
        self._group: GroupCommit[sqlite3.Connection] = GroupCommit(self._batch)
        migrations.apply(self.db)
        self._data_version = self._read_data_version()
        self._version_checked = False

    def _batch(self, ops: list[tuple[Op, bool]], durable: bool) -> list[tuple[bool, Any]]:
        conn = self.db.conn
        with nullcontext() if durable else without_fsync(conn, self._synchronous):
            return _commit(conn, ops)

    def close(self) -> None:
        self._group.flush()
        self.db.close()

    def reopen(self) -> EventStore:
        if self.path == ":memory:":
            raise ValueError("an in-memory database cannot be opened again")
        return EventStore(self.path, durable=self._durable)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, list(params))

    def ping(self, timeout: float) -> None:
        if self.path == ":memory:":
            return
        # mode=rw: a file that is gone is not made again, empty.
        uri = Path(self.path).resolve().as_uri() + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            conn.execute(PING).fetchone()
        finally:
            conn.close()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.conn.executemany(sql, rows)

    def atomic(self) -> AbstractContextManager[Any]:
        return self.db.atomic()

    def snapshot(self) -> AbstractContextManager[Any]:
        return self.db.atomic()  # in WAL mode, a read transaction is a snapshot

    # -- writing ------------------------------------------------------------
    #
    # `create` and `append` commit at once; `create_async` and `append_async`
    # are committed with whatever else was appended during the same pass of
    # the event loop, in one transaction (one fsync for the lot).

    def create(self, thread_id: str, rows: Sequence[NewRow], **projection: Any) -> None:
        """Start a thread with its first events (a launch, or a fork's copy).
        `projection`: status, title, origin, and optionally parent, routes,
        deliver_to, waiting, due_at, overdue_at (see `_create`)."""
        with self.db.atomic():
            _create(self.db.conn, thread_id, rows, **projection)

    async def create_async(self, thread_id: str, rows: Sequence[NewRow], **projection: Any) -> None:
        await self._group.submit(partial(_create, thread_id=thread_id, rows=rows, **projection))

    def append(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int:
        """Append rows at `expected_seq`, `expected_seq + 1`, ... and return the
        last seq. Raises `SeqConflict` when the thread has moved on since the
        caller loaded it, and `DuplicateKey` when a row's key is already stored;
        either way nothing is written. `projection`: status, and optionally
        routes, deliver_to, waiting, due_at, overdue_at."""
        with self.db.atomic():
            return _append(self.db.conn, thread_id, expected_seq, rows, **projection)

    async def append_async(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int:
        """`append`, acknowledged once its batch is on disk."""
        op = partial(
            _append, thread_id=thread_id, expected_seq=expected_seq, rows=rows, **projection
        )
        return int(await self._group.submit(op))

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
    ) -> bool:
        """Set a thread's projection to what its events say, if no append came
        in since they were read. False when one did (read again and retry)."""
        # One statement: a transaction that read first and wrote after would
        # fail at once, not wait, if another process committed in between.
        cursor = self.db.execute(
            "UPDATE threads SET status = ?, title = ?, last_seq = ?, deliver_to = ?, "
            "waiting = ?, due_at = ?, overdue_at = ? WHERE id = ? "
            "AND (SELECT max(seq) FROM events WHERE thread_id = ?) = ?",
            [
                status,
                title,
                last_seq,
                deliver_to,
                waiting,
                due_at,
                overdue_at,
                thread_id,
                thread_id,
                last_seq,
            ],
        )
        return cursor.rowcount == 1

    # -- leases ---------------------------------------------------------------

    def acquire(
        self, thread_id: str, owner: str, ttl: float, *, steal_from: str | None = None
    ) -> bool:
        """Take or renew the lease on a thread for `ttl` seconds. Fails while
        another owner holds an unexpired lease, unless it is `steal_from` (an
        owner the caller knows to be dead)."""
        return bool(
            self._lease_write(
                partial(_acquire, thread_id=thread_id, owner=owner, ttl=ttl, steal_from=steal_from)
            )
        )

    async def acquire_async(self, thread_id: str, owner: str, ttl: float) -> bool:
        """`acquire`, in the batch being formed (no fsync of its own)."""
        op = partial(_acquire, thread_id=thread_id, owner=owner, ttl=ttl, steal_from=None)
        return bool(await self._group.submit(op, durable=False))

    def release(self, thread_id: str, owner: str) -> None:
        self._lease_write(partial(_release, thread_id=thread_id, owner=owner))

    async def release_async(self, thread_id: str, owner: str) -> None:
        """`release`, in the batch being formed (no fsync of its own)."""
        await self._group.submit(partial(_release, thread_id=thread_id, owner=owner), durable=False)

    def renew_all(self, owner: str, ttl: float) -> set[str]:
        """Extend every lease `owner` holds; returns the threads they are on."""

        def renew(conn: sqlite3.Connection) -> set[str]:
            conn.execute(
                "UPDATE leases SET expires_at = ? WHERE owner = ?", [time.time() + ttl, owner]
            )
            rows = conn.execute("SELECT thread_id FROM leases WHERE owner = ?", [owner])
            return {r[0] for r in rows}

        return self._lease_write(renew)

    def release_all(self, owner: str) -> None:
        self._lease_write(lambda conn: conn.execute("DELETE FROM leases WHERE owner = ?", [owner]))

    def _lease_write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Leases need no durability: after a crash they are stale anyway
        (their holder is gone), so their commits skip the fsync that each
        append pays. They go through the same connection as the appends, so
        that `changed_elsewhere` does not count them."""
        conn = self.db.conn
        if conn.in_transaction:
            return op(conn)
        with without_fsync(conn, self._synchronous), self.db.atomic():
            return op(conn)

    def hold_presence(self, owner: str) -> None:
        pass  # a runner on this host is judged by its pid

    def owner_gone(self, owner: str) -> bool | None:
        return None

    def orphans(self, owner: str, channels: Iterable[str]) -> list[str]:
        return []

    async def listen(self, notify: Callable[[str, float | None], None]) -> None:
        return  # other connections' commits are seen through `changed_elsewhere`

    def changed_elsewhere(self) -> bool:
        """Whether another connection (another process, mostly) committed
        anything since the last call. Asked once per pass of the event loop:
        within one pass, the answer stands (a commit made meanwhile is seen
        at the next pass, as if it had come a moment later)."""
        if self._version_checked:
            return False
        version = self._read_data_version()
        try:
            asyncio.get_running_loop().call_soon(self._recheck)
            self._version_checked = True
        except RuntimeError:
            pass  # no event loop: ask every time
        if version == self._data_version:
            return False
        self._data_version = version
        return True

    def _recheck(self) -> None:
        self._version_checked = False

    def _read_data_version(self) -> int:
        return int(self.db.conn.execute("PRAGMA data_version").fetchone()[0])

    # -- reading ------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self.db.conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.conn.execute(sql, params).fetchone()

    def load_json(self, thread_id: str) -> bytes | None:
        """The thread's event bodies as one JSON array (UTF-8), built by
        SQLite: one object instead of a Python string per row, and no
        decoding, since the parser reads bytes; None if no such thread."""
        row = self.db.execute(
            "SELECT CAST('[' || group_concat(body, ',') || ']' AS BLOB) FROM "
            "(SELECT body FROM events WHERE thread_id = ? ORDER BY seq)",
            [thread_id],
        ).fetchone()
        return row[0] if row and row[0] is not None else None

    def keep_note(self, thread_id: str, channel: str, value: str | None) -> None:
        """Like a lease, a note is written without an fsync of its own: a
        crashed process's note survives; a crashed machine's may not."""
        self._lease_write(partial(_keep_note, thread_id=thread_id, channel=channel, value=value))

    def meta(self, key: str, default: str) -> str:
        """A deployment setting kept in the database; `default` is stored the
        first time, and wins only then (several processes agree on one value)."""
        with self.db.atomic():
            self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", [key, default])
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return str(row[0])


# -- writes, on whichever connection runs them --------------------------------


def _create(
    conn: sqlite3.Connection,
    thread_id: str,
    rows: Sequence[NewRow],
    *,
    routes: Iterable[str] = (),
    outbox: Sequence[OutboxRow] = (),
    **projection: Any,
) -> None:
    try:
        conn.execute(INSERT_THREAD, thread_params(thread_id, len(rows) - 1, **projection))
        _insert(conn, thread_id, 0, rows, routes, outbox)
    except sqlite3.IntegrityError:
        _raise_duplicate(conn, rows)
        raise SeqConflict(thread_id, 0) from None  # a thread of that id exists already


def _append(
    conn: sqlite3.Connection,
    thread_id: str,
    expected_seq: int,
    rows: Sequence[NewRow],
    *,
    routes: Iterable[str] = (),
    outbox: Sequence[OutboxRow] = (),
    **projection: Any,
) -> int:
    last = expected_seq + len(rows) - 1
    cursor = conn.execute(
        APPEND_PROJECTION, append_params(thread_id, expected_seq, last, **projection)
    )
    if cursor.rowcount != 1:
        known = conn.execute("SELECT 1 FROM threads WHERE id = ?", [thread_id]).fetchone()
        raise SeqConflict(thread_id, expected_seq) if known else UnknownThread(thread_id)
    try:
        _insert(conn, thread_id, expected_seq, rows, routes, outbox)
    except sqlite3.IntegrityError:
        _raise_duplicate(conn, rows)
        # The seq was taken by a writer that did not update the projection.
        raise SeqConflict(thread_id, expected_seq) from None
    return last


def _insert(
    conn: sqlite3.Connection,
    thread_id: str,
    first_seq: int,
    rows: Sequence[NewRow],
    routes: Iterable[str],
    outbox: Sequence[OutboxRow] = (),
) -> None:
    if len(rows) == 1:
        r = rows[0]
        conn.execute(INSERT_EVENT, (thread_id, first_seq, r.type, r.key, r.body))
    else:
        conn.executemany(
            INSERT_EVENT,
            [(thread_id, first_seq + i, r.type, r.key, r.body) for i, r in enumerate(rows)],
        )
    refs = [(ref, thread_id) for ref in routes]
    if refs:
        conn.executemany("INSERT OR REPLACE INTO routes (ref, thread_id) VALUES (?, ?)", refs)
    if outbox:
        conn.executemany(INSERT_OUTBOX, outbox_params(outbox))


def _acquire(
    conn: sqlite3.Connection, thread_id: str, owner: str, ttl: float, steal_from: str | None
) -> bool:
    return conn.execute(ACQUIRE, acquire_params(thread_id, owner, ttl, steal_from)).rowcount == 1


def _release(conn: sqlite3.Connection, thread_id: str, owner: str) -> None:
    conn.execute(RELEASE, [thread_id, owner])


def _keep_note(conn: sqlite3.Connection, thread_id: str, channel: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM notes WHERE thread_id = ? AND channel = ?", [thread_id, channel])
    else:
        conn.execute(
            "INSERT OR REPLACE INTO notes (thread_id, channel, value) VALUES (?, ?, ?)",
            [thread_id, channel, value],
        )


def _find_key(conn: sqlite3.Connection, key: str) -> tuple[str, int] | None:
    row = conn.execute(FIND_KEY, [key]).fetchone()
    return (row[0], row[1]) if row else None


def _raise_duplicate(conn: sqlite3.Connection, rows: Sequence[NewRow]) -> None:
    for row in rows:
        if row.key is not None and (found := _find_key(conn, row.key)) is not None:
            raise DuplicateKey(row.key, *found) from None


def _commit(conn: sqlite3.Connection, ops: list[tuple[Op, bool]]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        if len(ops) == 1:  # alone, an op's failure undoes the whole transaction
            try:
                results.append((True, ops[0][0](conn)))
            except Exception as e:
                conn.execute("ROLLBACK")
                return [(False, e)]
        else:
            for op, guarded in ops:
                if not guarded:
                    results.append((True, op(conn)))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    results.append((False, e))
                conn.execute("RELEASE op")
        conn.execute("COMMIT")
    except Exception as e:
        # Nothing of the batch is stored (a full disk, a lock held too long):
        # every caller hears so, none is told its write landed.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(False, e)] * len(ops)
    return results
