"""The SQLite event log: schema, optimistic appends, delivery keys, projection."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from store import Credentials, DuplicateKey, EventStore, NewRow, SeqConflict, UnknownThread


def row(n: int, key: str | None = None) -> NewRow:
    return NewRow("x", f'{{"n": {n}}}', key)


def test_migrated_schema(tmp_path: Path) -> None:
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


def test_an_append_writes_four_pages_and_lookups_use_the_partial_indexes(
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


def test_append_at_the_expected_seq_only(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    assert store.append("t", 1, [row(1), row(2)], status="done") == 2
    with pytest.raises(SeqConflict):
        store.append("t", 2, [row(9)], status="running")
    with pytest.raises(SeqConflict):
        store.append("t", 5, [row(9)], status="running")  # no gaps either
    assert store.load("t") == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    t = store.thread("t")
    assert t is not None and (t.status, t.last_seq) == ("done", 2)
    with pytest.raises(UnknownThread):
        store.append("nope", 1, [row(1)], status="running")


def test_two_processes_racing_for_one_seq_cannot_both_win(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    EventStore(path).create("t", [row(0)], status="running", title="t", origin="{}")
    writers = [EventStore(path) for _ in range(8)]
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def write(i: int, store: EventStore) -> None:
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
    reader = EventStore(path)
    bodies = reader.load("t")
    assert len(bodies) == 2
    winner = int(bodies[1].split(":")[1].strip(" }")) - 100
    thread = reader.thread("t")
    assert thread is not None and thread.status == f"by{winner}"


def test_a_repeated_key_writes_nothing_and_names_the_original(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("t", [row(0, key="slack:Ev1")], status="running", title="t", origin="{}")
    store.append("t", 1, [row(1, key="http:k")], status="running")
    with pytest.raises(DuplicateKey) as caught:
        store.append("t", 2, [row(2, key="http:k")], status="done")
    assert (caught.value.thread_id, caught.value.seq) == ("t", 1)
    with pytest.raises(DuplicateKey):
        store.create("u", [row(0, key="slack:Ev1")], status="running", title="u", origin="{}")
    assert store.thread("u") is None
    assert len(store.load("t")) == 2
    t = store.thread("t")
    assert t is not None and t.status == "running"


def test_listing_by_status_and_routes(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    for i, status in enumerate(["running", "done", "waiting_for_human", "done"]):
        store.create(f"t{i}", [row(0)], status=status, title=f"t{i}", origin="{}")
    assert {t.id for t in store.threads(status="done")} == {"t1", "t3"}
    assert store.thread_ids(status="running") == ["t0"]
    assert len(store.threads()) == 4
    store.append("t2", 1, [row(1)], status="running", routes=["slack:C9:17.1"])
    assert store.route("slack:C9:17.1") == "t2"
    assert store.route("slack:other") is None


def test_fork_records_its_parent(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("t", [row(0)], status="done", title="t", origin="{}")
    store.create("f", [row(0)], status="running", title="t", origin="{}", parent=("t", 0))
    f = store.thread("f")
    assert f is not None and (f.parent_id, f.parent_seq) == ("t", 0)


def test_meta_keeps_the_first_value(tmp_path: Path) -> None:
    a = EventStore(tmp_path / "t.db")
    assert a.meta("secret", "first") == "first"
    assert EventStore(tmp_path / "t.db").meta("secret", "second") == "first"


def test_leases(tmp_path: Path) -> None:
    a, b = EventStore(tmp_path / "t.db"), EventStore(tmp_path / "t.db")
    assert a.acquire("t", "A", 30)
    assert not b.acquire("t", "B", 30)  # held
    assert a.acquire("t", "A", 30)  # renewed by its owner
    assert b.lease_owner("t") == "A"
    assert b.acquire("t", "B", 30, steal_from="A")  # A is known to be dead
    assert not a.acquire("t", "A", 30)
    b.release("t", "B")
    assert a.lease_owner("t") is None
    assert a.acquire("t", "A", -1)  # already expired
    assert b.acquire("t", "B", 30)
    b.release_all("B")
    assert a.lease_owner("t") is None


@pytest.mark.anyio
async def test_appends_of_one_pass_commit_together_and_fail_alone(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    for t in ("a", "b", "c"):
        store.create(t, [row(0)], status="running", title=t, origin="{}")
    store.append("b", 1, [row(1, key="k1")], status="running")
    commits: list[str] = []
    store.db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="done"),
        store.append_async("b", 1, [row(9)], status="running"),  # seq 1 is taken
        store.append_async("c", 1, [row(1, key="k1")], status="running"),  # key is taken
        store.create_async("d", [row(0)], status="running", title="d", origin="{}"),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert isinstance(results[1], SeqConflict)
    assert isinstance(results[2], DuplicateKey) and (results[2].thread_id, results[2].seq) == (
        "b",
        1,
    )
    assert results[3] is None
    assert commits == ["COMMIT"]  # one transaction, one fsync
    again = EventStore(tmp_path / "t.db")
    assert [again.load(t) for t in "abcd"] == [
        ['{"n": 0}', '{"n": 1}'],
        ['{"n": 0}', '{"n": 1}'],
        ['{"n": 0}'],
        ['{"n": 0}'],
    ]
    assert again.thread("a").status == "done"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_batch_that_cannot_commit_fails_every_append_in_it(tmp_path: Path) -> None:
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


def test_leases_are_not_changes_another_connection_must_read(tmp_path: Path) -> None:
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


@pytest.mark.anyio
async def test_an_append_alone_in_its_batch_fails_cleanly(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    with pytest.raises(SeqConflict):
        await store.append_async("a", 5, [row(5)], status="done")
    with pytest.raises(UnknownThread):
        await store.append_async("nope", 1, [row(1)], status="done")
    assert store.db.conn.in_transaction is False
    assert await store.append_async("a", 1, [row(1)], status="done") == 1
    assert store.load("a") == ['{"n": 0}', '{"n": 1}']
    assert store.thread("a").status == "done"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_leases_ride_in_the_batch_and_alone_skip_the_fsync(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    taken, _, seq = await asyncio.gather(
        store.acquire_async("a", "me", 30.0),
        store.acquire_async("b", "me", 30.0),
        store.append_async("a", 1, [row(1)], status="running"),
    )
    assert (taken, seq) == (True, 1)
    assert statements.count("COMMIT") == 1  # leases and append: one transaction
    assert not any(s.startswith("PRAGMA synchronous") for s in statements)  # fsynced as usual
    statements.clear()
    await asyncio.gather(store.release_async("a", "me"), store.release_async("b", "me"))
    assert statements[0] == "PRAGMA synchronous = OFF"  # leases alone: no fsync
    assert statements[-1] == "PRAGMA synchronous = FULL"  # and appends fsync again after
    assert statements.count("COMMIT") == 1
    other = EventStore(tmp_path / "t.db")
    assert other.lease_owner("a") is None and other.acquire("a", "them", 30.0)
    assert not await store.acquire_async("a", "me", 30.0)  # held by another owner


@pytest.mark.anyio
async def test_a_lease_write_that_fails_fails_its_batch(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    store.create("a", [row(0)], status="running", title="a", origin="{}")
    store.db.execute("DROP TABLE leases")  # a write that cannot be done
    results = await asyncio.gather(
        store.append_async("a", 1, [row(1)], status="running"),
        store.acquire_async("a", "me", 30.0),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert store.db.conn.in_transaction is False
    assert store.load("a") == ['{"n": 0}']  # the append in that batch was not stored


def test_renewing_every_lease_of_an_owner_at_once(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    assert store.acquire("a", "me", 0.01) and store.acquire("b", "me", 0.01)
    assert store.acquire("c", "you", 30.0)
    assert store.renew_all("me", 30.0) == {"a", "b"}
    other = EventStore(tmp_path / "t.db")
    time.sleep(0.02)  # past the first expiry: the renewal holds them
    assert not other.acquire("a", "them", 30.0)
    assert other.lease_owner("b") == "me"


def test_credentials_keep_only_hashes_and_links_work_once(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "t.db")
    credentials = Credentials(store)
    token_id, token = credentials.create_token("ann", "approve", None)
    link = credentials.create_link("ann", 900)
    cookie, session = credentials.create_session("ann", "session:email", 60)
    dump = "\n".join(store.db.iterdump())
    for secret in (token.split("_", 2)[2], link, cookie):
        assert secret not in dump
    found = credentials.check_token(token)
    assert found is not None and (found.id, found.person) == (token_id, "ann")
    assert credentials.check_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert credentials.check_token(f"tb_{token_id}_") is None
    assert credentials.use_link(link) == "ann" and credentials.use_link(link) is None
    assert credentials.use_link(credentials.create_link("ann", -1)) is None  # expired
    assert credentials.session(cookie) == session
    credentials.end_session(cookie)
    assert credentials.session(cookie) is None
    assert credentials.session(credentials.create_session("ann", "x", -1)[0]) is None


def test_a_database_from_before_timers_keeps_what_it_had_to_deliver(tmp_path: Path) -> None:
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
    assert store.thread("pending") is not None and store.thread("pending").due_at is None
