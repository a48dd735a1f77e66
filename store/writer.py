"""Group commit: appends from the event loop, written by one thread in batches.

An append is acknowledged only once it is on disk, and on disk means an
fsync. Done on the event loop, every append would stall everything else for
its fsync; done one transaction each, a thousand busy threads would pay a
thousand fsyncs. The writer thread takes whatever queued up while its last
commit was being synced and writes it as one transaction, each write inside
its own savepoint so that one refused append (a seq conflict, a duplicate
key) leaves the others in the batch standing. Each caller's future resolves
after the COMMIT returns, with its own result or error.

SQLite releases the GIL while it writes and syncs, so the event loop keeps
running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Writer"]

T = TypeVar("T")

Op = Callable[[sqlite3.Connection], Any]
_Job = tuple[Op, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]

MAX_BATCH = 512


def _resolve(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in done:
        if fut.cancelled():
            continue  # the caller gave up waiting; the write stands regardless
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Writer:
    def __init__(self, path: str, *, synchronous: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="threadbot-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `op` to run inside the next batch's transaction; the future
        holds its return value (or exception) once the batch is on disk."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, loop, fut))
        return fut

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._conn.close()

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._deliver(batch, self._commit([op for op, _, _ in batch]))

    def _commit(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        conn = self._conn
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    results.append((False, e))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            # Nothing of the batch is stored (a full disk, a lock held too
            # long): every caller hears so, none is told its write landed.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, e)] * len(ops)
        return results

    @staticmethod
    def _deliver(batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
        per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, loop, fut), (ok, value) in zip(batch, results, strict=True):
            per_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in per_loop.items():
            # A closed loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, done)
