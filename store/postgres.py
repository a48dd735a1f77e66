"""The durable event log over PostgreSQL: one database, replicas on several hosts.

The same rows and promises as the SQLite store (see `sqlite`): an append is
checked against the seq its writer expected, a delivery key is stored once,
the projection lands in the append's transaction, and an append is
acknowledged once it is committed (`synchronous_commit` on; batches of lease
writes alone skip waiting for the flush).

What several hosts add:
- **Who is alive.** A runner holds a session-level advisory lock named after
  it on a connection of its own (`hold_presence`). The server drops the lock
  when that connection ends: at once when the process dies, and within the
  TCP keepalive window set below when its host vanishes. A lease whose owner
  holds no such lock belongs to a dead runner and may be taken, by a runner
  that has listened to the same server for a few seconds: a server restart
  drops every lock, and live runners take theirs again as they reconnect.
- **Wake-ups.** Triggers NOTIFY on every change of a thread's row and every
  freed lease; `listen` hands them to the runner, so an answer stored by one
  replica reaches the one that waits for the thread at once.
- **Migrations** run under an advisory lock, so replicas starting together
  apply each one once.

Connections come from a small psycopg pool, which replaces a broken one: a
restart of the server fails the statements in flight, not the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import DuplicateKey, SeqConflict, StoreError, UnknownThread
from .queries import (
    ACQUIRE,
    APPEND_PROJECTION,
    FIND_KEY,
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
from .rows import NewRow, OutboxRow, now_iso
from .writer import GroupCommit

__all__ = ["PostgresStore", "migrate"]

T = TypeVar("T")
Conn = psycopg.Connection[Any]
Op = Callable[[Conn], Any]

log = logging.getLogger("threadbot.store")

CHANNEL = "threadbot"
"""The NOTIFY channel: payload `thread_id` or `thread_id due_at`."""

TAKEOVER_EVERY = 2.0
"""Seconds between a runner's looks for threads whose runner died."""

UNCLAIMED_DELIVERY = 300.0
"""Seconds after which an undelivered thread that nobody holds is taken up
(the longest wait between a runner's own delivery retries)."""

RELISTEN_MAX = 2.0
"""Longest wait, in seconds, between a listener's tries to reconnect."""

JUDGE_AFTER = 5.0
"""Seconds a runner's listener must have been connected (and the server up)
before the runner takes another's presence lock, free, for its death. A
server restart (or a failover, or a network fault on the way to it) ends
every runner's presence connection at once; live runners take their locks
again as their listeners reconnect, within `RELISTEN_MAX` of each other."""

MIGRATIONS_LOCK = 0x7468726561646274  # "threadbt"

KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "connect_timeout": 5,
}
"""Client side: a server that vanished is noticed within about 11 s (idle)
or 10 s (while a statement waits for it), and a connection to one that does
not answer is given up after 5 s."""

SERVER_KEEPALIVE = (
    "SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3"
)
"""Server side: a runner whose host vanished (no FIN, no RST) loses its
presence lock, and the row locks of a transaction it left open, within
about 11 s."""

SESSION_LIMITS = (
    "SET idle_in_transaction_session_timeout = '15s'; SET lock_timeout = '10s'; "
    "SET statement_timeout = '30s'"
)
"""No transaction of ours stays open, waits for a lock or runs for long: one
that does belongs to a runner that is gone or cut off, and must not hold the
others (an append waits for the thread's row lock)."""


def _configure(conn: Conn) -> None:
    conn.execute(SERVER_KEEPALIVE)
    conn.execute(SESSION_LIMITS)


def _sql(query: str) -> str:
    """A statement written with `?` placeholders, as for SQLite (none of ours
    holds a literal `?`), with psycopg's."""
    return query.replace("?", "%s")


CREATE_THREAD = _sql(INSERT_THREAD) + " ON CONFLICT (id) DO NOTHING"

POOL_WAIT = 2.0
"""Seconds a call waits for a connection from the pool."""

INSERT_BATCH = 1000
"""Events per INSERT statement when many are stored at once (a fork's copy)."""


# -- the schema ----------------------------------------------------------------------

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_schema",
        # The same tables as SQLite's migrations leave (see store.migrations
        # for what each is for), written at once.
        """
        CREATE TABLE events (
            thread_id text NOT NULL,
            seq integer NOT NULL,
            type text NOT NULL,
            key text,
            body text NOT NULL,
            PRIMARY KEY (thread_id, seq)
        );
        CREATE UNIQUE INDEX events_key ON events (key) WHERE key IS NOT NULL;
        CREATE TABLE threads (
            id text PRIMARY KEY,
            status text NOT NULL,
            title text NOT NULL,
            origin text NOT NULL,
            created_at text NOT NULL,
            updated_at text NOT NULL,
            last_seq integer NOT NULL,
            parent_id text,
            parent_seq integer,
            waiting text NOT NULL DEFAULT '',
            deliver_to text NOT NULL DEFAULT '',
            due_at double precision,
            overdue_at double precision
        );
        CREATE INDEX threads_status ON threads (status, updated_at);
        CREATE INDEX threads_updated ON threads (updated_at);
        CREATE INDEX threads_deliver_to ON threads (deliver_to) WHERE deliver_to <> '';
        CREATE INDEX threads_due ON threads (due_at) WHERE due_at IS NOT NULL;
        CREATE TABLE routes (ref text PRIMARY KEY, thread_id text NOT NULL);
        CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
        CREATE TABLE leases (
            thread_id text PRIMARY KEY,
            owner text NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE INDEX leases_owner ON leases (owner);
        CREATE TABLE tokens (
            id text PRIMARY KEY,
            person text NOT NULL,
            scope text NOT NULL,
            hash text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision,
            revoked_at double precision
        );
        CREATE TABLE sessions (
            hash text PRIMARY KEY,
            person text NOT NULL,
            auth text NOT NULL,
            csrf text NOT NULL,
            expires_at double precision NOT NULL
        );
        CREATE TABLE sign_in_links (
            hash text PRIMARY KEY,
            person text NOT NULL,
            expires_at double precision NOT NULL,
            used_at double precision
        );
        -- Every change to a thread's row (an append, a projection rewrite)
        -- and every freed lease wakes the replicas that listen.
        CREATE FUNCTION threadbot_thread_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('threadbot', NEW.id || ' ' || coalesce(NEW.due_at::text, ''));
            RETURN NULL;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER threads_changed AFTER INSERT OR UPDATE ON threads
            FOR EACH ROW EXECUTE FUNCTION threadbot_thread_changed();
        CREATE FUNCTION threadbot_lease_freed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('threadbot', OLD.thread_id);
            RETURN NULL;
        END $$ LANGUAGE plpgsql;
        CREATE TRIGGER leases_freed AFTER DELETE ON leases
            FOR EACH ROW EXECUTE FUNCTION threadbot_lease_freed();
        """,
    ),
    (
        "002_notes",
        """
        CREATE TABLE notes (
            thread_id text NOT NULL,
            channel text NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (thread_id, channel)
        );
        """,
    ),
    (
        "003_webhooks",
        # See store.migrations, m010.
        """
        CREATE TABLE webhook_outbox (
            id text NOT NULL,
            url text NOT NULL,
            type text NOT NULL,
            thread_id text NOT NULL,
            seq integer NOT NULL,
            payload text NOT NULL,
            created_at double precision NOT NULL,
            next_at double precision NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            state text NOT NULL DEFAULT 'pending',
            claimed_by text,
            PRIMARY KEY (id, url)
        );
        CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE state = 'pending';
        CREATE TABLE webhook_attempts (
            id text NOT NULL,
            url text NOT NULL,
            attempt integer NOT NULL,
            at double precision NOT NULL,
            status integer,
            error text,
            duration double precision NOT NULL,
            PRIMARY KEY (id, url, attempt)
        );
        CREATE INDEX webhook_attempts_at ON webhook_attempts (at);
        """,
    ),
]


def migrate(conn: Conn) -> list[str]:
    """Apply the migrations not yet applied, one replica at a time; returns
    the names applied here."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATIONS_LOCK])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS threadbot_migrations "
            "(name text PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT name FROM threadbot_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO threadbot_migrations (name, applied_at) VALUES (%s, %s)",
                [name, time.time()],
            )
            applied.append(name)
    return applied


# -- the store -----------------------------------------------------------------------


class PostgresStore(Reads):
    takeover_every: float | None = TAKEOVER_EVERY

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = url
        self._durable = durable
        try:
            # Once, directly: a wrong address, name or password is said now
            # and plainly, where the pool would retry it in the background.
            psycopg.connect(url, **KEEPALIVE).close()
        except psycopg.Error as e:
            raise StoreError(f"cannot use the PostgreSQL database: {e}".strip()) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True, **KEEPALIVE},
            open=True,
            name="threadbot",
            # A call waits this long for a connection while the server is
            # unreachable, then fails (a request gets a 500, a run stops
            # and is picked up again), rather than holding its loop longer.
            timeout=POOL_WAIT,
            check=_still_open,
            configure=_configure,
        )
        self._pool.wait(timeout=30)
        self._in_tx: Conn | None = None
        """The connection of the `atomic` block being run, if any."""
        self._presence: Conn | None = None
        self._presence_owner: str | None = None
        self._judge_from = math.inf
        """When (monotonic) `owner_gone` may say yes: once `listen` is
        connected; see `JUDGE_AFTER`."""
        self._judge_on: Any = None
        """The start time of the server the listener is connected to."""
        self._group: GroupCommit[Conn] = GroupCommit(self._batch)
        with self._conn() as conn:
            migrate(conn)

    def reopen(self) -> PostgresStore:
        return PostgresStore(self.url, durable=self._durable)

    def close(self) -> None:
        self._group.flush()
        if self._presence is not None:
            self._presence.close()
            self._presence = None
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        if self._in_tx is not None:
            yield self._in_tx
            return
        with self._pool.connection() as conn:
            yield conn

    def _batch(self, ops: list[tuple[Op, bool]], durable: bool) -> list[tuple[bool, Any]]:
        with self._conn() as conn:
            return _commit(conn, ops, durable=durable and self._durable)

    # -- writing ---------------------------------------------------------------------

    def create(self, thread_id: str, rows: Sequence[NewRow], **projection: Any) -> None:
        self._write(partial(_create, thread_id=thread_id, rows=rows, **projection))

    async def create_async(self, thread_id: str, rows: Sequence[NewRow], **projection: Any) -> None:
        await self._group.submit(partial(_create, thread_id=thread_id, rows=rows, **projection))

    def append(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int:
        return int(
            self._write(
                partial(
                    _append,
                    thread_id=thread_id,
                    expected_seq=expected_seq,
                    rows=rows,
                    **projection,
                )
            )
        )

    async def append_async(
        self, thread_id: str, expected_seq: int, rows: Sequence[NewRow], **projection: Any
    ) -> int:
        op = partial(
            _append, thread_id=thread_id, expected_seq=expected_seq, rows=rows, **projection
        )
        return int(await self._group.submit(op))

    def _write(self, op: Callable[[Conn], T], *, durable: bool = True) -> T:
        with self._conn() as conn:
            ok, value = _commit(conn, [(op, False)], durable=durable and self._durable)[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

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
        def rewrite(conn: Conn) -> bool:
            # The thread's row is locked first: an append waits for this.
            conn.execute("SELECT 1 FROM threads WHERE id = %s FOR UPDATE", [thread_id])
            last = conn.execute(
                "SELECT max(seq) FROM events WHERE thread_id = %s", [thread_id]
            ).fetchone()
            if last is None or last[0] != last_seq:
                return False
            conn.execute(
                "UPDATE threads SET status = %s, title = %s, last_seq = %s, deliver_to = %s, "
                "waiting = %s, due_at = %s, overdue_at = %s WHERE id = %s",
                [status, title, last_seq, deliver_to, waiting, due_at, overdue_at, thread_id],
            )
            return True

        return self._write(rewrite)

    # -- leases ----------------------------------------------------------------------

    def acquire(
        self, thread_id: str, owner: str, ttl: float, *, steal_from: str | None = None
    ) -> bool:
        return bool(
            self._write(
                partial(_acquire, thread_id=thread_id, owner=owner, ttl=ttl, steal_from=steal_from),
                durable=False,
            )
        )

    async def acquire_async(self, thread_id: str, owner: str, ttl: float) -> bool:
        op = partial(_acquire, thread_id=thread_id, owner=owner, ttl=ttl, steal_from=None)
        return bool(await self._group.submit(op, durable=False))

    def release(self, thread_id: str, owner: str) -> None:
        self._write(partial(_release, thread_id=thread_id, owner=owner), durable=False)

    async def release_async(self, thread_id: str, owner: str) -> None:
        await self._group.submit(partial(_release, thread_id=thread_id, owner=owner), durable=False)

    def renew_all(self, owner: str, ttl: float) -> set[str]:
        self._keep_presence()

        def renew(conn: Conn) -> set[str]:
            rows = conn.execute(
                "UPDATE leases SET expires_at = %s WHERE owner = %s RETURNING thread_id",
                [time.time() + ttl, owner],
            )
            return {r[0] for r in rows}

        return self._write(renew, durable=False)

    def release_all(self, owner: str) -> None:
        self._write(
            lambda conn: conn.execute("DELETE FROM leases WHERE owner = %s", [owner]),
            durable=False,
        )

    # -- runners on several hosts ----------------------------------------------------

    def hold_presence(self, owner: str) -> None:
        self._presence_owner = owner
        self._keep_presence()

    def _keep_presence(self) -> None:
        """(Re)open the presence connection and take the owner's lock on it;
        a server restart ends the old one."""
        owner = self._presence_owner
        if owner is None:
            return
        if self._presence is not None and not self._presence.closed:
            try:
                self._presence.execute("SELECT 1")
                return
            except psycopg.Error:
                self._presence.close()
        conn = psycopg.connect(self.url, autocommit=True, **KEEPALIVE)
        conn.execute(SERVER_KEEPALIVE)
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [owner])
        self._presence = conn

    def owner_gone(self, owner: str) -> bool | None:
        """Whether no connection holds `owner`'s presence lock (tried from
        the pool's connection, which never holds one, and let go at once).
        Never while this store's listener is down or has just reconnected,
        nor just after the server started: live runners may not have taken
        their locks again yet."""
        if time.monotonic() < self._judge_from:
            return False

        def probe(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)), "
                "pg_postmaster_start_time()",
                [owner],
            ).fetchone()
            assert row is not None
            free, server = row
            # Another server than the listener's (restarted since, or failed
            # over): its locks are being taken again.
            return bool(free) and self._judge_on in (None, server)

        return self._write(probe, durable=False)

    def orphans(self, owner: str, channels: Iterable[str]) -> list[str]:
        """Threads left by a dead runner (its lease stands, its presence lock
        is gone), and threads nobody holds: running ones a moment after their
        last append, undelivered ones after the longest delivery backoff
        (a live runner retries those itself, sooner)."""
        names = list(channels)
        like = " OR ".join("t.deliver_to LIKE %s" for _ in names) or "false"
        undelivered = f"(t.deliver_to <> '' AND ({like}))"  # the partial index
        now = time.time()
        rows = self._rows(
            "SELECT t.id, l.owner FROM threads t LEFT JOIN leases l ON l.thread_id = t.id "
            f"WHERE (t.status = 'running' OR {undelivered}) AND (l.owner IS NULL AND ("
            f"  (t.status = 'running' AND t.updated_at < %s) OR t.updated_at < %s"
            ") OR l.owner <> %s)",
            [
                *(f"% {n} %" for n in names),
                now_iso(now - TAKEOVER_EVERY),
                now_iso(now - UNCLAIMED_DELIVERY),
                owner,
            ],
        )
        gone: dict[str, bool] = {}
        found = []
        for thread_id, holder in rows:
            if holder is not None:
                if holder not in gone:
                    gone[holder] = bool(self.owner_gone(holder))
                if not gone[holder]:
                    continue
            found.append(thread_id)
        return found

    async def listen(self, notify: Callable[[str, float | None], None]) -> None:
        delay = 0.5
        while True:
            try:
                aconn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, **KEEPALIVE
                )
                async with aconn:
                    row = await (
                        await aconn.execute(
                            "SELECT pg_postmaster_start_time(), "
                            "extract(epoch FROM now() - pg_postmaster_start_time())::float"
                        )
                    ).fetchone()
                    assert row is not None
                    await aconn.execute(f"LISTEN {CHANNEL}")
                    # A restart of the server ended the presence connection
                    # too: hold the lock again now, not at the next renewal
                    # (meanwhile other replicas would take this runner for dead).
                    self._keep_presence()
                    # Reconnected, the runner waits; connected for the first
                    # time, it waits only for a server that has just started.
                    up = 0.0 if self._judge_on is not None else row[1]
                    self._judge_on = row[0]
                    self._judge_from = time.monotonic() + max(0.0, JUDGE_AFTER - up)
                    delay = 0.5
                    async for n in aconn.notifies():
                        thread_id, _, due = n.payload.partition(" ")
                        try:
                            at = float(due) if due else None
                        except ValueError:  # anyone who may connect may NOTIFY
                            log.warning("ignored a notification: %r", n.payload[:100])
                            continue
                        notify(thread_id, at)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("listening for other replicas' changes failed (%s); again shortly", e)
            finally:
                self._judge_from = math.inf  # no judging others while not listening
            await asyncio.sleep(delay)
            delay = min(delay * 2, RELISTEN_MAX)

    def changed_elsewhere(self) -> bool:
        # The server keeps no cheap counter of other sessions' commits: a
        # cached thread is caught up with one indexed query each time.
        return True

    # -- reading ---------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._read(sql, params, psycopg.Cursor.fetchall)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._read(sql, params, psycopg.Cursor.fetchone)

    def _read(self, sql: str, params: Sequence[Any], fetch: Callable[[Any], T]) -> T:
        """A read, tried again once if the connection it got was broken
        (the server restarted since it was last used): reads can be."""
        try:
            with self._conn() as conn:
                return fetch(conn.execute(_sql(sql), params))
        except psycopg.OperationalError as e:
            if self._in_tx is not None or isinstance(e, PoolTimeout):
                raise  # no connection to be had: the server is down
            self._pool.check()  # replaces every broken idle connection
            with self._conn() as conn:
                return fetch(conn.execute(_sql(sql), params))

    def load_json(self, thread_id: str) -> bytes | None:
        row = self._one(
            "SELECT '[' || string_agg(body, ',' ORDER BY seq) || ']' FROM events "
            "WHERE thread_id = %s",
            [thread_id],
        )
        return row[0].encode() if row and row[0] is not None else None

    def meta(self, key: str, default: str) -> str:
        def get(conn: Conn) -> str:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                [key, default],
            )
            row = conn.execute("SELECT value FROM meta WHERE key = %s", [key]).fetchone()
            assert row is not None
            return str(row[0])

        return self._write(get)

    def keep_note(self, thread_id: str, channel: str, value: str | None) -> None:
        op = partial(_keep_note, thread_id=thread_id, channel=channel, value=value)
        self._write(op, durable=False)

    # -- rows beside the log ------------------------------------------------------------

    def ping(self, timeout: float) -> None:
        limits = {**KEEPALIVE, "connect_timeout": max(2, math.ceil(timeout))}
        ms = max(1, int(timeout * 1000))
        with psycopg.connect(self.url, options=f"-c statement_timeout={ms}", **limits) as conn:
            conn.execute(PING).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        with self._conn() as conn:
            return conn.execute(_sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn() as conn, conn.cursor() as cur:
            cur.executemany(_sql(sql), rows)

    @contextmanager
    def atomic(self, *, snapshot: bool = False) -> Iterator[Conn]:
        if self._in_tx is not None:  # nested: a savepoint
            with self._in_tx.transaction():
                yield self._in_tx
            return
        with self._pool.connection() as conn, conn.transaction():
            if snapshot:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self._in_tx = conn
            try:
                yield conn
            finally:
                self._in_tx = None

    def snapshot(self) -> AbstractContextManager[Conn]:
        return self.atomic(snapshot=True)


def _still_open(conn: Conn) -> None:
    """The pool's look at a connection before lending it. An idle connection
    has nothing to read unless its server closed it or its network failed (a
    restart, an outage): such a one is closed and the pool lends another,
    rather than the caller's first statement failing. No round trip."""
    poll = select.poll()  # not select(): a busy server has descriptors past 1024
    poll.register(conn.fileno(), select.POLLIN)
    if poll.poll(0):
        conn.close()
        raise psycopg.OperationalError("the server closed this idle connection")


# -- writes, on whichever connection runs them ------------------------------------------


def _commit(conn: Conn, ops: list[tuple[Op, bool]], *, durable: bool) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    try:
        with conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            if len(ops) == 1:  # alone, an op's failure undoes the whole transaction
                try:
                    results.append((True, ops[0][0](conn)))
                except Exception as e:
                    results.append((False, e))
                    raise _Undo from None
            else:
                for op, guarded in ops:
                    if not guarded:
                        results.append((True, op(conn)))
                        continue
                    try:
                        with conn.transaction():  # a savepoint
                            results.append((True, op(conn)))
                    except Exception as e:
                        results.append((False, e))
    except _Undo:
        return results
    except Exception as e:
        # Nothing of the batch is stored (the server went away, say): every
        # caller hears so, none is told its write landed.
        return [(False, e)] * len(ops)
    return results


class _Undo(Exception):
    """Roll the transaction back, the op's own error already noted."""


def _create(
    conn: Conn,
    thread_id: str,
    rows: Sequence[NewRow],
    *,
    routes: Iterable[str] = (),
    outbox: Sequence[OutboxRow] = (),
    **projection: Any,
) -> None:
    params = thread_params(thread_id, len(rows) - 1, **projection)
    if conn.execute(CREATE_THREAD, params).rowcount != 1:
        raise SeqConflict(thread_id, 0)  # a thread of that id exists already
    _insert(conn, thread_id, 0, rows, routes, outbox)


def _append(
    conn: Conn,
    thread_id: str,
    expected_seq: int,
    rows: Sequence[NewRow],
    *,
    routes: Iterable[str] = (),
    outbox: Sequence[OutboxRow] = (),
    **projection: Any,
) -> int:
    last = expected_seq + len(rows) - 1
    # A concurrent append to the same thread waits here for the other's
    # commit, then finds last_seq moved on: exactly one of them wins.
    params = append_params(thread_id, expected_seq, last, **projection)
    if conn.execute(_sql(APPEND_PROJECTION), params).rowcount != 1:
        known = conn.execute("SELECT 1 FROM threads WHERE id = %s", [thread_id]).fetchone()
        raise SeqConflict(thread_id, expected_seq) if known else UnknownThread(thread_id)
    _insert(conn, thread_id, expected_seq, rows, routes, outbox)
    return last


def _insert(
    conn: Conn,
    thread_id: str,
    first_seq: int,
    rows: Sequence[NewRow],
    routes: Iterable[str],
    outbox: Sequence[OutboxRow] = (),
) -> None:
    # ON CONFLICT DO NOTHING keeps the transaction usable after a clash, so
    # that the clash can be named (a stored key, or a seq taken by a writer
    # that did not update the projection); the caller's error undoes the rest.
    stored = 0
    for start in range(0, len(rows), INSERT_BATCH):
        chunk = rows[start : start + INSERT_BATCH]
        values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
        params: list[Any] = []
        for i, r in enumerate(chunk, start=first_seq + start):
            params += (thread_id, i, r.type, r.key, r.body)
        stored += conn.execute(
            f"INSERT INTO events (thread_id, seq, type, key, body) VALUES {values} "
            "ON CONFLICT DO NOTHING",
            params,
        ).rowcount
    if stored != len(rows):
        for row in rows:
            if row.key is None or (found := _find_key(conn, row.key)) is None:
                continue
            # A key found among this append's own rows is no duplicate.
            if found[0] != thread_id or found[1] < first_seq:
                raise DuplicateKey(row.key, *found)
        raise SeqConflict(thread_id, first_seq)
    refs = [(ref, thread_id) for ref in routes]
    if refs:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO routes (ref, thread_id) VALUES (%s, %s) "
                "ON CONFLICT (ref) DO UPDATE SET thread_id = excluded.thread_id",
                refs,
            )
    if outbox:
        with conn.cursor() as cur:
            cur.executemany(_sql(INSERT_OUTBOX), outbox_params(outbox))


def _acquire(conn: Conn, thread_id: str, owner: str, ttl: float, steal_from: str | None) -> bool:
    params = acquire_params(thread_id, owner, ttl, steal_from)
    return conn.execute(_sql(ACQUIRE), params).rowcount == 1


def _release(conn: Conn, thread_id: str, owner: str) -> None:
    conn.execute(_sql(RELEASE), [thread_id, owner])


def _find_key(conn: Conn, key: str) -> tuple[str, int] | None:
    row = conn.execute(_sql(FIND_KEY), [key]).fetchone()
    return (row[0], row[1]) if row else None


def _keep_note(conn: Conn, thread_id: str, channel: str, value: str | None) -> None:
    if value is None:
        conn.execute(
            "DELETE FROM notes WHERE thread_id = %s AND channel = %s", [thread_id, channel]
        )
    else:
        conn.execute(
            "INSERT INTO notes (thread_id, channel, value) VALUES (%s, %s, %s) "
            "ON CONFLICT (thread_id, channel) DO UPDATE SET value = EXCLUDED.value",
            [thread_id, channel, value],
        )
