"""Group commit: appends made on the event loop, committed together.

An append is acknowledged only once it is on disk, and on disk means an
fsync. One transaction per append would make a thousand busy threads pay a
thousand fsyncs. Instead the appends submitted during one pass of the event
loop wait for the next pass, which writes them all as one transaction (one
fsync), each inside its own savepoint so that one refused append (a seq
conflict, a duplicate key) leaves the others in the batch standing. Each
caller's future resolves after the COMMIT, with its own result or error.

The commit runs on the loop. A writer thread would let the loop work during
the fsync, but every SQLite call it makes must take the GIL back from a busy
loop (up to the interpreter's switch interval, 5 ms, each time): measured
here, that made appends slower under load and a single resume 1.5 ms slower.

Writes that need no durability (leases: after a crash they are stale anyway)
go through the same batches without a savepoint; a batch of only those is
committed without an fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

__all__ = ["GroupCommit", "without_fsync"]

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


class GroupCommit:
    def __init__(self, conn: sqlite3.Connection, synchronous: str) -> None:
        self._conn = conn
        self._synchronous = synchronous
        """The connection's own setting, restored after a batch without fsync."""
        self._jobs: list[tuple[Op, bool, asyncio.Future[Any]]] = []
        self._durable = 0
        """Durable ops in the batch being formed."""

    def submit(
        self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> asyncio.Future[T]:
        """Queue `op` to run inside the next batch's transaction; the future
        holds its return value (or exception) once the batch is committed (on
        disk, if any op of the batch is `durable`). A durable op runs in a
        savepoint of its own; one that is not must not fail but as a whole."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._jobs:
            loop.call_soon(self.flush)
        self._jobs.append((op, durable, fut))
        self._durable += durable
        return fut

    def flush(self) -> None:
        jobs, self._jobs = self._jobs, []
        durable, self._durable = self._durable, 0
        if not jobs:
            return
        conn = self._conn
        try:
            with nullcontext() if durable else without_fsync(conn, self._synchronous):
                results = _commit(conn, [(op, d) for op, d, _ in jobs])
        except Exception as e:  # a closed connection, say: nobody may wait forever
            results = [(False, e)] * len(jobs)
        for (_, _, fut), (ok, value) in zip(jobs, results, strict=True):
            if fut.cancelled():
                continue  # the caller stopped waiting; the write stands regardless
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


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
