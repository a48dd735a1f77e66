"""Copy a whole store into another, row for row, and check the copy.

`threadbot migrate --from threadbot.db --to postgresql://…` moves a
deployment from SQLite to PostgreSQL (or back). Everything that outlives a
process is copied: the events, the thread list, the routes, the settings
kept in the database (signing secrets: a reply address signed before the
move still verifies after it) and people's API tokens, sessions and sign-in
links, and the webhooks still to send with every attempt logged. Leases are
not: they belong to the processes that ran before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .base import Store
from .errors import StoreError

__all__ = ["TABLES", "CopyReport", "copy_store"]

TABLES: dict[str, tuple[str, ...]] = {
    "threads": (
        "id",
        "status",
        "title",
        "origin",
        "created_at",
        "updated_at",
        "last_seq",
        "parent_id",
        "parent_seq",
        "waiting",
        "deliver_to",
        "due_at",
        "overdue_at",
    ),
    "events": ("thread_id", "seq", "type", "key", "body"),
    "routes": ("ref", "thread_id"),
    "meta": ("key", "value"),
    "tokens": ("id", "person", "scope", "hash", "created_at", "expires_at", "revoked_at"),
    "sessions": ("hash", "person", "auth", "csrf", "expires_at"),
    "sign_in_links": ("hash", "person", "expires_at", "used_at"),
    "webhook_outbox": (
        "id",
        "url",
        "type",
        "thread_id",
        "seq",
        "payload",
        "created_at",
        "next_at",
        "attempts",
        "state",
        "claimed_by",
    ),
    "webhook_attempts": ("id", "url", "attempt", "at", "status", "error", "duration"),
}
"""What is copied, in this order (a thread's row before its events)."""

KEYS = {
    "events": ("thread_id", "seq"),
    "webhook_outbox": ("id", "url"),
    "webhook_attempts": ("id", "url", "attempt"),
}
"""Each table's primary key, when not its first column."""

BATCH = 1000


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    """Rows copied, by table: the same count was found on both sides."""


def copy_store(source: Store, target: Store) -> CopyReport:
    """Copy `source` into `target`, which must hold no threads yet: what the
    source held at one moment, in one transaction on `target`, compared
    table by table and thread by thread before it commits. Raises
    `StoreError`, with the target left as it was, if the target is not
    empty, a server is running threads on the source, or the copy differs."""
    report = CopyReport()
    with source.snapshot():
        leased = source.execute(
            "SELECT count(*) FROM leases WHERE expires_at > ?", [time.time()]
        ).fetchone()[0]
        if leased:
            raise StoreError(f"a server is running {leased} thread(s) on the source: stop it first")
        if target.execute("SELECT count(*) FROM threads").fetchone()[0]:
            raise StoreError("the target already holds threads: copy into an empty database")
        with target.atomic():
            # The target generated its own settings when it was first opened
            # (a signing secret, say): the source's replace them.
            target.execute("DELETE FROM meta")
            for table, columns in TABLES.items():
                marks = ", ".join("?" * len(columns))
                insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                copied = 0
                for page in _pages(source, table, columns):
                    target.executemany(insert, page)
                    copied += len(page)
                report.rows[table] = copied
            _verify(source, target, report)
    return report


def _pages(store: Store, table: str, columns: tuple[str, ...]) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in key order, a page at a time (a large log is
    never held whole)."""
    key = KEYS.get(table, columns[:1])
    keys = ", ".join(key)
    first = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {keys} LIMIT {BATCH}"
    after = (
        f"SELECT {', '.join(columns)} FROM {table} WHERE ({keys}) > ({', '.join('?' * len(key))}) "
        f"ORDER BY {keys} LIMIT {BATCH}"
    )
    at = [columns.index(k) for k in key]
    page = [tuple(r) for r in store.execute(first).fetchall()]
    while page:
        yield page
        if len(page) < BATCH:
            return
        page = [tuple(r) for r in store.execute(after, [page[-1][i] for i in at]).fetchall()]


def _verify(source: Store, target: Store, report: CopyReport) -> None:
    for table, copied in report.rows.items():
        found = target.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if found != copied:
            raise StoreError(f"{table}: {copied} rows copied but {found} found in the target")
    if _threads_digest(source) != _threads_digest(target):
        raise StoreError("the events in the target differ from the source's")
    for store, side in ((source, "source"), (target, "target")):
        off = store.execute(
            "SELECT count(*) FROM threads t WHERE last_seq != "
            "(SELECT max(seq) FROM events e WHERE e.thread_id = t.id)"
        ).fetchone()[0]
        if off:
            raise StoreError(
                f"{off} thread(s) in the {side} list another last event than their own "
                "(run `threadbot reindex` on the source)"
            )


def _threads_digest(store: Store) -> dict[str, tuple[int, int, str]]:
    """Each thread's event count, last seq and a hash of its bodies in order."""
    digests: dict[str, tuple[int, int, str]] = {}
    current: str | None = None
    count = last = 0
    h = hashlib.sha256()
    for thread_id, seq, _type, _key, body in (
        row for page in _pages(store, "events", TABLES["events"]) for row in page
    ):
        if thread_id != current:
            if current is not None:
                digests[current] = (count, last, h.hexdigest())
            current, count, h = thread_id, 0, hashlib.sha256()
        count += 1
        last = seq
        h.update(body.encode())
        h.update(b"\0")
    if current is not None:
        digests[current] = (count, last, h.hexdigest())
    return digests
