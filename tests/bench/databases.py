"""The benchmarks on PostgreSQL: fresh databases on one server, and the bytes
the log takes there.

`--postgres` starts a throwaway server of our own (tests/pg.py: the
machine's PostgreSQL binaries, its default settings, fsync on, 127.0.0.1);
`--postgres-url URL` uses the server at URL, creating the databases it needs
there and dropping them at the end. Each benchmark gets a database of its own.
psycopg is imported only then: a run on SQLite does not load it.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

from store import EventStore, Store

if TYPE_CHECKING:
    from ..pg import Postgres, PostgresServer

LOG_TABLES = ("events", "threads", "routes")
"""What a thread's log takes on PostgreSQL (leases, meta and credentials left out)."""


class PostgresDatabases:
    """Fresh databases for one run of a benchmark, on a throwaway server of
    our own (`url` None) or on the server at `url`."""

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._own: PostgresServer | None = None
        self._made: list[str] = []
        self.server: Postgres | None = None

    def __enter__(self) -> PostgresDatabases:
        from ..pg import Postgres, PostgresServer

        if self._url is None:
            self._own = self.server = PostgresServer().start()
        else:
            self.server = Postgres(self._url)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._own is not None:
            self._own.stop()  # the whole cluster goes
            return
        assert self.server is not None
        for name in self._made:
            self.server.drop_database(name)

    def new(self, purpose: str) -> str:
        """The URL of an empty database, for one benchmark."""
        assert self.server is not None, "use in a `with`"
        name = f"threadbot_bench_{purpose}_{uuid.uuid4().hex[:8]}"
        url = self.server.create_database(name)
        self._made.append(name)
        return url

    def version(self) -> str:
        import psycopg

        assert self.server is not None
        with psycopg.connect(self.server.url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def table_bytes(store: Store) -> dict[str, int]:
    """On PostgreSQL, each log table's `pg_total_relation_size`: heap,
    indexes and TOAST, in whole 8 KB pages, row versions not yet vacuumed
    included (every append leaves an old version of its thread's row in
    threads until it is vacuumed)."""
    sizes = ", ".join(f"pg_total_relation_size('{t}')" for t in LOG_TABLES)
    row = store.execute(f"SELECT {sizes}").fetchone()
    return dict(zip(LOG_TABLES, map(int, row), strict=True))


def relation_bytes(store: Store) -> int:
    """On PostgreSQL, the log tables' bytes (see `table_bytes`)."""
    return sum(table_bytes(store).values())


def growth(
    before: dict[str, int], round_trips_before: int, after: dict[str, int], round_trips: int
) -> dict[str, Any]:
    """Bytes per round-trip between two measures of `table_bytes`, in all
    and by table."""
    n = max(1, round_trips - round_trips_before)
    return {
        "bytes_per_round_trip": sum(after[t] - before[t] for t in after) / n,
        "bytes_per_round_trip_by_table": {t: (after[t] - before[t]) / n for t in after},
        "bytes_over_round_trips": round_trips - round_trips_before,
    }


def give_back_space(store: Store) -> None:
    """After deleting a scratch thread on PostgreSQL: rewrite the log's
    tables, so that later rows cannot reuse the space it freed and the growth
    measured next is theirs alone. Nothing to do on SQLite (`dbstat` counts
    only pages in use)."""
    if isinstance(store, EventStore):
        return
    store.execute("VACUUM FULL events, threads")
