"""The event log's contract, on both stores: optimistic appends, delivery
keys, the projection, leases, meta, routes, credentials, reindex. Tests named
`test_sqlite_*` are about SQLite itself (its pages, PRAGMAs, traces); the
PostgreSQL specifics are in test_postgres."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from bot import OpenAIModel, ThreadBot, load_tools
from store import (
    Credentials,
    DuplicateKey,
    EventStore,
    NewRow,
    SeqConflict,
    Store,
    UnknownThread,
)
from store.copy import TABLES

from .conftest import settled
from .fakes import FakeOpenAI, ask

MakeStore = Callable[[], Store]


def row(n: int, key: str | None = None) -> NewRow:
    return NewRow("x", f'{{"n": {n}}}', key)


# -- the schema ----------------------------------------------------------------------


def test_every_table_has_its_columns_and_opening_again_keeps_the_rows(
    make_store: MakeStore,
) -> None:
    store = make_store()
    store.create("t", [row(0, key="k")], status="running", title="t", origin="{}")
    for table, columns in TABLES.items():
        store.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    again = make_store()  # its migrations find everything applied
    assert again.load("t") == ['{"n": 0}'] and again.find_key("k") == ("t", 0)


def test_sqlite_migrated_schema(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    db = store.db
    assert db.table("events").columns_dict == {
        "thread_id": str,
        "seq": int,
        "type": str,
        "key": str,
        "body": str,
    }
    assert db.table("events").pks == ["thread_id", "seq"]
    assert set(db.table("threads").columns_dict) == {
        "id",
        "status",
        "title",
        "origin",
        "created_at",
        "updated_at",
        "last_seq",
        "parent_id",
        "parent_seq",
        "deliver_to",
        "waiting",
        "due_at",
        "overdue_at",
    }
    assert db.table("routes").pks == ["ref"]
    unique = {tuple(i.columns) for i in db.table("events").indexes if i.unique}
    assert ("key",) in unique
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Opening again applies nothing twice.
    EventStore(tmp_path / "t.db")
    names = [r["name"] for r in db.table("_sqlite_migrations").rows]
    assert names == [
        "m001_events_and_threads",
        "m002_meta",
        "m003_leases",
        "m004_undelivered",
        "m005_waiting",
        "m006_partial_indexes",
        "m007_credentials",
        "m008_timers_and_channels",
        "m009_notes",
        "m010_webhook_outbox",
    ]
    assert db.table("meta").pks == ["key"]
    # Credentials keep hashes of their secrets, never the secrets.
    assert set(db.table("tokens").columns_dict) == {
        "id",
        "person",
        "scope",
        "hash",
        "created_at",
        "expires_at",
        "revoked_at",
    }
    assert db.table("sessions").pks == ["hash"] and db.table("sign_in_links").pks == ["hash"]


def test_sqlite_an_append_writes_four_pages_and_lookups_use_the_partial_indexes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"
    store = EventStore(path)
    for i in range(500):
        store.create(f"t{i:03d}", [row(0, key=f"k{i}")], status="running", title="t", origin="{}")
    for seq in range(1, 20):
        store.append("t100", seq, [row(seq)], status="running")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = Path(f"{path}-wal").stat().st_size
    store.append("t100", 20, [row(20)], status="running")
    frame = 4096 + 24  # a page and its WAL frame header
    assert (Path(f"{path}-wal").stat().st_size - before) // frame == 4
    plans = [
        " ".join(str(r[3]) for r in store.db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
        for sql in (
            "SELECT thread_id, seq FROM events WHERE key = 'k7'",
            "SELECT id FROM threads WHERE deliver_to != '' AND deliver_to LIKE '% slack %'",
            "SELECT id FROM threads WHERE due_at <= 5 ORDER BY due_at LIMIT 10",
        )
    ]
    assert "USING INDEX events_key" in plans[0]
    assert "USING INDEX threads_deliver_to" in plans[1]
    assert "USING INDEX threads_due" in plans[2]
    assert store.find_key("k7") == ("t007", 0)
    with pytest.raises(DuplicateKey):
        store.append("t100", 21, [row(21, key="k7")], status="running")


def test_sqlite_a_database_from_before_timers_keeps_what_it_had_to_deliver(
    tmp_path: Path,
) -> None:
    """m008 turns the undelivered flag into the channels to deliver to: a
    thread that had something undelivered keeps it, for its own channel."""
    from sqlite_utils import Database

    from store.migrations import migrations

    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m008_timers_and_channels")
    for thread_id, undelivered in (("pending", 1), ("quiet", 0)):
        old.execute(
            "INSERT INTO threads (id, status, title, origin, created_at, updated_at, last_seq, "
            "undelivered) VALUES (?, 'waiting_for_human', 't', ?, 'x', 'x', 0, ?)",
            [thread_id, '{"channel": "slack"}', undelivered],
        )
    old.conn.commit()
    old.close()
    store = EventStore(path)
    assert store.undelivered_ids(["slack", "email"]) == ["pending"]
    assert store.undelivered_ids(["email"]) == []
    pending = store.thread("pending")
    assert pending is not None and pending.due_at is None


# -- appends ---------------------------------------------------------------------------


def test_append_at_the_expected_seq_only(make_store: MakeStore) -> None:
    store = make_store()
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    assert store.append("t", 1, [row(1), row(2)], status="done") == 2
    with pytest.raises(SeqConflict):
        store.append("t", 2, [row(9)], status="running")
    with pytest.raises(SeqConflict):
        store.append("t", 5, [row(9)], status="running")  # no gaps either
    # No second start.
    with pytest.raises(SeqConflict):
        store.create("t", [row(7)], status="failed", title="t", origin="{}")
    assert make_store().load("t") == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    t = store.thread("t")
    assert t is not None and (t.status, t.last_seq) == ("done", 2)
    with pytest.raises(UnknownThread):
        store.append("nope", 1, [row(1)], status="running")


def test_eight_writers_racing_for_one_seq_cannot_both_win(make_store: MakeStore) -> None:
    make_store().create("t", [row(0)], status="running", title="t", origin="{}")
    writers = [make_store() for _ in range(8)]
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def write(i: int, store: Store) -> None:
        barrier.wait()
        try:
            store.append("t", 1, [row(100 + i)], status=f"by{i}")
            outcomes.append("won")
        except SeqConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    reader = make_store()
    bodies = reader.load("t")
    assert len(bodies) == 2
    winner = int(bodies[1].split(":")[1].strip(" }")) - 100
    thread = reader.thread("t")
    assert thread is not None and thread.status == f"by{winner}"


def test_a_repeated_key_writes_nothing_and_names_the_original(make_store: MakeStore) -> None:
    store = make_store()
    store.create("t", [row(0, key="slack:Ev1")], status="running", title="t", origin="{}")
    store.append("t", 1, [row(1, key="http:k")], status="running")
    other = make_store()  # a redelivery reaching another process
    with pytest.raises(DuplicateKey) as caught:
        other.append("t", 2, [row(2, key="http:k")], status="done")
    assert (caught.value.thread_id, caught.value.seq) == ("t", 1)
    with pytest.raises(DuplicateKey) as again:
        other.create("u", [row(0, key="slack:Ev1")], status="running", title="u", origin="{}")
    assert (again.value.thread_id, again.value.seq) == ("t", 0)
    assert store.thread("u") is None
    assert len(store.load("t")) == 2
    t = store.thread("t")
    assert t is not None and (t.status, t.last_seq) == ("running", 1)
    assert other.find_key("http:k") == ("t", 1) and other.find_key("nope") is None
    # Two rows of one append with their own keys are no duplicates of each other.
    assert store.append("t", 2, [row(2, key="a"), row(3, key="b")], status="running") == 3


@pytest.mark.anyio
async def test_an_append_alone_in_its_batch_fails_cleanly(make_store: MakeStore) -> None:
    store = make_store()
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    with pytest.raises(SeqConflict):
        await store.append_async("a", 5, [row(5)], status="done")
    with pytest.raises(UnknownThread):
        await store.append_async("nope", 1, [row(1)], status="done")
    # Nothing of the refused ones stayed open: the next append commits.
    assert await store.append_async("a", 1, [row(1)], status="done") == 1
    other = make_store()
    assert other.load("a") == ['{"n": 0}', '{"n": 1}']
    assert other.thread("a").status == "done"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_appends_of_one_pass_commit_together_and_fail_alone(make_store: MakeStore) -> None:
    """Each append of a batch has its own savepoint: one refused append (its
    seq taken, its key stored) leaves the others of its batch standing."""
    store = make_store()
    for t in ("a", "b", "c"):
        store.create(t, [row(0)], status="running", title=t, origin="{}")
    store.append("b", 1, [row(1, key="k1")], status="running")
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="done"),
        store.append_async("b", 1, [row(9)], status="running"),  # seq 1 is taken
        store.append_async("c", 1, [row(1, key="k1")], status="running"),  # key is taken
        store.create_async("d", [row(0)], status="running", title="d", origin="{}"),
        store.append_async("c", 1, [row(1)], status="waiting_for_human"),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], SeqConflict)
    assert isinstance(results[2], DuplicateKey)
    assert (results[2].thread_id, results[2].seq) == ("b", 1)
    assert results[3] is None
    assert results[4] == 1  # after the refused append to the same thread
    again = make_store()
    assert [again.load(t) for t in "abcd"] == [
        ['{"n": 0}', '{"n": 1}'],
        ['{"n": 0}', '{"n": 1}'],
        ['{"n": 0}', '{"n": 1}'],
        ['{"n": 0}'],
    ]
    assert [again.thread(t).status for t in "abc"] == [  # type: ignore[union-attr]
        "done",
        "running",
        "waiting_for_human",
    ]


@pytest.mark.anyio
async def test_sqlite_appends_of_one_pass_are_one_commit(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    for t in ("a", "b"):
        store.create(t, [row(0)], status="running", title=t, origin="{}")
    commits: list[str] = []
    store.db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="done"),
        store.append_async("b", 5, [row(5)], status="done"),  # refused
        store.append_async("b", 1, [row(1)], status="done"),
        return_exceptions=True,
    )
    assert results[0] == 1 and isinstance(results[1], SeqConflict) and results[2] == 1
    assert commits == ["COMMIT"]  # one transaction, one fsync


@pytest.mark.anyio
async def test_sqlite_a_batch_that_cannot_commit_fails_every_append_in_it(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    other = EventStore(tmp_path / "t.db")
    other.db.execute("PRAGMA busy_timeout = 0")
    store.db.execute("PRAGMA busy_timeout = 0")
    other.db.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="running"),
        store.append_async("a", 2, [row(2)], status="running"),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    other.db.execute("ROLLBACK")
    assert store.load("a") == ['{"n": 0}']
    assert await store.append_async("a", 1, [row(1)], status="running") == 1


@pytest.mark.anyio
async def test_a_write_of_a_batch_that_fails_fails_its_batch(make_store: MakeStore) -> None:
    """A lease write has no savepoint of its own: when it fails, the batch's
    transaction fails, and so does every append in it (none is stored)."""
    store = make_store()
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    store.execute("DROP TABLE leases")  # a write that cannot be done
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="running"),
        store.acquire_async("a", "me", 30.0),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.OperationalError | psycopg.Error) for r in results)
    assert make_store().load("a") == ['{"n": 0}']  # the append in that batch was not stored
    assert await store.append_async("a", 1, [row(1)], status="running") == 1


def test_another_connections_append_is_seen(make_store: MakeStore) -> None:
    store, other = make_store(), make_store()
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    store.changed_elsewhere()
    other.append("t", 1, [row(1)], status="done")
    assert store.changed_elsewhere() is True
    assert store.load_from("t", 1) == ['{"n": 1}']
    assert store.thread("t").status == "done"  # type: ignore[union-attr]


def test_sqlite_leases_are_not_changes_another_connection_must_read(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    other = EventStore(tmp_path / "t.db")
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    assert store.changed_elsewhere() is False
    assert store.acquire("t", "me", 30.0)
    store.release("t", "me")
    assert store.changed_elsewhere() is False
    other.append("t", 1, [row(1)], status="running")
    assert store.changed_elsewhere() is True
    assert store.changed_elsewhere() is False


# -- the projection ----------------------------------------------------------------------


def test_the_projection_lands_with_each_append(make_store: MakeStore) -> None:
    store, other = make_store(), make_store()
    store.create(
        "a",
        [row(0)],
        status="waiting_for_human",
        title="deploy",
        origin='{"channel": "slack"}',
        deliver_to=" slack ",
        waiting="an answer",
        due_at=100.5,
        overdue_at=90.0,
    )
    store.create("b", [row(0)], status="running", title="b", origin="{}", due_at=200.0)
    store.create("c", [row(0)], status="done", title="c", origin="{}")
    a = other.thread("a")
    assert a is not None
    assert (a.status, a.title, a.origin, a.last_seq, a.waiting, a.due_at, a.overdue_at) == (
        "waiting_for_human",
        "deploy",
        '{"channel": "slack"}',
        0,
        "an answer",
        100.5,
        90.0,
    )
    assert other.undelivered_ids(["slack", "email"]) == ["a"]
    assert other.undelivered_ids(["email"]) == [] and other.undelivered_ids([]) == []
    assert other.due_ids(150.0) == ["a"] and other.due_ids(250.0) == ["a", "b"]
    assert other.due_ids(250.0, limit=1) == ["a"]
    assert other.next_due(100.5) == 200.0 and other.next_due(200.0) is None
    assert [t.id for t in other.threads(due_first=True)][:2] == ["a", "b"]
    assert [t.id for t in other.threads(overdue_by=95.0)] == ["a"]
    assert other.all_thread_ids() == ["a", "b", "c"]

    # An append replaces the projection with what the caller derived.
    store.append("a", 1, [row(1), row(2)], status="running", waiting="")
    a = other.thread("a")
    assert a is not None and (a.status, a.last_seq, a.waiting, a.due_at) == ("running", 2, "", None)
    assert other.undelivered_ids(["slack"]) == [] and other.due_ids(150.0) == []
    assert other.load_json("a") == b'[{"n": 0},{"n": 1},{"n": 2}]'
    assert other.load_json("nope") is None
    assert other.load("a", upto=1) == ['{"n": 0}', '{"n": 1}']
    assert other.load_from("a", 2) == ['{"n": 2}']

    # A rewrite holds only if no append came in since the events were read.
    assert not store.rewrite_projection("a", 1, status="done", title="x")
    assert other.rewrite_projection("a", 2, status="done", title="x", due_at=5.0)
    a = store.thread("a")
    assert a is not None and (a.status, a.title, a.due_at) == ("done", "x", 5.0)


def test_listing_by_status_and_routes(make_store: MakeStore) -> None:
    store = make_store()
    for i, status in enumerate(["running", "done", "waiting_for_human", "done"]):
        store.create(f"t{i}", [row(0)], status=status, title=f"t{i}", origin="{}")
    assert {t.id for t in store.threads(status="done")} == {"t1", "t3"}
    assert store.thread_ids(status="running") == ["t0"]
    assert len(store.threads()) == 4 and len(store.threads(limit=2)) == 2
    store.append("t2", 1, [row(1)], status="running", routes=["slack:C9:17.1"])
    other = make_store()
    assert other.route("slack:C9:17.1") == "t2"
    assert other.route("slack:other") is None
    # A route moves to the thread that names it last.
    store.create(
        "t4", [row(0)], status="running", title="t4", origin="{}", routes=["slack:C9:17.1"]
    )
    assert other.route("slack:C9:17.1") == "t4"


def test_fork_records_its_parent(make_store: MakeStore) -> None:
    store = make_store()
    store.create("t", [row(0)], status="done", title="t", origin="{}")
    store.create("f", [row(0)], status="running", title="t", origin="{}", parent=("t", 0))
    f = make_store().thread("f")
    assert f is not None and (f.parent_id, f.parent_seq) == ("t", 0)


@pytest.mark.anyio
async def test_reindex_rebuilds_the_projection_from_the_events(
    make_store: MakeStore, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    bot = ThreadBot(make_store(), model, load_tools("tests.ledger_tools"), retry_delay=0)
    try:
        fake_openai.add(ask("Which version?"))
        thread_id = await bot.launch("deploy")
        await settled(bot, thread_id)
        # Another process's (or an old version's) wrong projection.
        make_store().execute(
            "UPDATE threads SET status = 'done', title = 'x', waiting = '' WHERE id = ?",
            [thread_id],
        )
        assert bot.reindex() == 1
        row = make_store().thread(thread_id)
        assert row is not None
        assert (row.status, row.title, row.last_seq) == ("waiting_for_human", "deploy", 1)
        assert row.waiting != ""
        assert bot.reindex() == 0
    finally:
        await bot.close()
        bot.store.close()


def test_atomic_commits_all_or_nothing(make_store: MakeStore) -> None:
    store, other = make_store(), make_store()
    with store.atomic():
        store.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("a", "1"), ("b", "2")])
        assert store.execute("SELECT count(*) FROM meta").fetchone()[0] == 2
        assert other.execute("SELECT count(*) FROM meta").fetchone()[0] == 0  # not yet
    assert other.meta("a", "x") == "1" and other.meta("b", "x") == "2"
    with pytest.raises(ZeroDivisionError), store.atomic():
        store.execute("UPDATE meta SET value = 'changed'")
        _ = 1 / 0
    with store.atomic():
        store.execute("INSERT INTO meta (key, value) VALUES ('c', '3')")
        with pytest.raises(ZeroDivisionError), store.atomic():  # a savepoint
            store.execute("DELETE FROM meta")
            _ = 1 / 0
    rows = other.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    assert [tuple(r) for r in rows] == [("a", "1"), ("b", "2"), ("c", "3")]


# -- settings, leases, credentials ---------------------------------------------------------


def test_meta_keeps_the_first_value(make_store: MakeStore) -> None:
    assert make_store().meta("secret", "first") == "first"
    assert make_store().meta("secret", "second") == "first"
    assert make_store().meta("other", "second") == "second"


def test_notes_are_kept_per_thread_and_channel_and_removed(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    assert a.note("t", "slack") is None
    a.keep_note("t", "slack", "first")
    a.keep_note("t", "slack", "second")  # replaced, not added
    a.keep_note("t", "email", "other")
    assert b.note("t", "slack") == "second"  # another connection reads it
    assert b.note("t", "email") == "other" and b.note("u", "slack") is None
    b.keep_note("t", "slack", None)
    assert a.note("t", "slack") is None and a.note("t", "email") == "other"


def test_leases(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    assert a.acquire("t", "A", 30)
    assert not b.acquire("t", "B", 30)  # held
    assert a.acquire("t", "A", 30)  # renewed by its owner
    assert b.lease_owner("t") == "A"
    assert b.acquire("t", "B", 30, steal_from="A")  # A is known to be dead
    assert not a.acquire("t", "A", 30)
    b.release("t", "B")
    assert a.lease_owner("t") is None
    assert a.acquire("t", "A", -1)  # already expired
    assert a.lease_owner("t") is None
    assert b.acquire("t", "B", 30)
    a.release("t", "A")  # not A's: stays
    assert a.lease_owner("t") == "B"
    b.release_all("B")
    assert a.lease_owner("t") is None


@pytest.mark.anyio
async def test_leases_ride_in_the_batch(make_store: MakeStore) -> None:
    store = make_store()
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    taken, also, seq = await asyncio.gather(
        store.acquire_async("a", "me", 30.0),
        store.acquire_async("b", "me", 30.0),
        store.append_async("a", 1, [row(1)], status="running"),
    )
    assert (taken, also, seq) == (True, True, 1)
    other = make_store()
    assert other.lease_owner("a") == "me" and other.lease_owner("b") == "me"
    await asyncio.gather(store.release_async("a", "me"), store.release_async("b", "me"))
    assert other.lease_owner("a") is None and other.acquire("a", "them", 30.0)
    assert not await store.acquire_async("a", "me", 30.0)  # held by another owner


@pytest.mark.anyio
async def test_sqlite_lease_batches_alone_skip_the_fsync(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    await asyncio.gather(
        store.acquire_async("a", "me", 30.0),
        store.acquire_async("b", "me", 30.0),
        store.append_async("a", 1, [row(1)], status="running"),
    )
    assert statements.count("COMMIT") == 1  # leases and append: one transaction
    assert not any(s.startswith("PRAGMA synchronous") for s in statements)  # fsynced as usual
    statements.clear()
    await asyncio.gather(store.release_async("a", "me"), store.release_async("b", "me"))
    assert statements[0] == "PRAGMA synchronous = OFF"  # leases alone: no fsync
    assert statements[-1] == "PRAGMA synchronous = FULL"  # and appends fsync again after
    assert statements.count("COMMIT") == 1


def test_renewing_every_lease_of_an_owner_at_once(make_store: MakeStore) -> None:
    store = make_store()
    assert store.acquire("a", "me", 0.01) and store.acquire("b", "me", 0.01)
    assert store.acquire("c", "you", 30.0)
    assert store.renew_all("me", 30.0) == {"a", "b"}
    other = make_store()
    time.sleep(0.02)  # past the first expiry: the renewal holds them
    assert not other.acquire("a", "them", 30.0)
    assert other.lease_owner("b") == "me"
    assert other.renew_all("nobody", 30.0) == set()


def test_credentials_keep_only_hashes_and_links_work_once(make_store: MakeStore) -> None:
    store = make_store()
    credentials = Credentials(store)
    token_id, token = credentials.create_token("ann", "approve", None)
    link = credentials.create_link("ann", 900)
    cookie, session = credentials.create_session("ann", "session:email", 60)
    dump = repr(
        [store.execute(f"SELECT * FROM {t}").fetchall() for t in ("tokens", "sessions", "meta")]
        + [store.execute("SELECT * FROM sign_in_links").fetchall()]
    )
    assert "ann" in dump  # the rows are there
    for secret in (token.split("_", 2)[2], link, cookie):
        assert secret not in dump
    # Another process (a replica) checks what this one handed out.
    elsewhere = Credentials(make_store())
    found = elsewhere.check_token(token)
    assert found is not None and (found.id, found.person, found.scope) == (
        token_id,
        "ann",
        "approve",
    )
    assert elsewhere.check_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert elsewhere.check_token(f"tb_{token_id}_") is None
    assert [t.id for t in elsewhere.tokens()] == [token_id]
    assert elsewhere.use_link(link) == "ann" and credentials.use_link(link) is None
    assert credentials.use_link(credentials.create_link("ann", -1)) is None  # expired
    assert elsewhere.session(cookie) == session
    credentials.end_session(cookie)
    assert elsewhere.session(cookie) is None
    assert credentials.session(credentials.create_session("ann", "x", -1)[0]) is None
    assert elsewhere.revoke(token_id) and not elsewhere.revoke(token_id)
    assert credentials.check_token(token) is None
