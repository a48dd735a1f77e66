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
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Batch", "GroupCommit"]

T = TypeVar("T")
C = TypeVar("C")
"""The store's connection type, which each op is handed."""

Batch = Callable[[list[tuple[Callable[[C], Any], bool]], bool], list[tuple[bool, Any]]]
"""Runs ops in one transaction, each `(op, guarded)`, durably or not; returns
each op's `(ok, result or exception)`. A guarded op runs in a savepoint of
its own; if the transaction itself fails, every op gets its exception."""


class GroupCommit(Generic[C]):
    def __init__(self, batch: Batch[C]) -> None:
        self._batch = batch
        self._jobs: list[tuple[Callable[[C], Any], bool, asyncio.Future[Any]]] = []
        self._durable = 0
        """Durable ops in the batch being formed."""

    def submit(self, op: Callable[[C], T], *, durable: bool = True) -> asyncio.Future[T]:
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
        try:
            results = self._batch([(op, d) for op, d, _ in jobs], durable > 0)
        except Exception as e:  # a closed connection, say: nobody may wait forever
            results = [(False, e)] * len(jobs)
        for (_, _, fut), (ok, value) in zip(jobs, results, strict=True):
            if fut.cancelled():
                continue  # the caller stopped waiting; the write stands regardless
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
