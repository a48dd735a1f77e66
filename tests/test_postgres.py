"""What the PostgreSQL store adds, against a real server: writers in several
processes on one thread, migrations when replicas start together, NOTIFY,
presence and takeover, a server restart, and `threadbot migrate`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot import OpenAIModel, ThreadBot, load_tools
from bot.webhooks import Webhooks, new_secret
from store import Credentials, NewRow, Outbox, SeqConflict, Store, open_store
from store.copy import TABLES
from store.postgres import MIGRATIONS, PostgresStore
from store.rows import now_iso

from . import pg
from .conftest import settled
from .fakes import REPO, FakeOpenAI, ask, clean_environ, text

Spawn = Callable[..., subprocess.Popen[str]]


def row(n: int) -> NewRow:
    return NewRow("x", f'{{"n": {n}}}')


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts `python -c CODE ARGS...` in the repo; whatever still runs at
    the end of the test is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            env=clean_environ(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the child's "ready" line."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"child said {line!r}:\n{err}")


def release(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Let children that are ready go at once; what each printed last."""
    for proc in procs:
        ready(proc)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(out.strip().splitlines()[-1])
    return outs


def until(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.01) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout} s"
        time.sleep(every)
    return time.monotonic() - start


# -- the schema ---------------------------------------------------------------------


def test_each_migration_is_recorded_once(pg_url: str) -> None:
    for _ in range(2):
        open_store(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM threadbot_migrations")]
    assert names == [name for name, _ in MIGRATIONS]


MIGRATE = """
import json, sys
import psycopg
from store.postgres import migrate
conn = psycopg.connect(sys.argv[1], autocommit=True)
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(migrate(conn)))
"""

OPEN = """
import sys
from store import NewRow, open_store
url, name = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
store = open_store(url)
store.create(name, [NewRow("x", "{}")], status="running", title=name, origin="{}")
print(name)
"""


def test_processes_migrating_a_fresh_database_at_once_apply_each_migration_once(
    pg_url: str, spawn: Spawn
) -> None:
    outs = release([spawn(MIGRATE, pg_url) for _ in range(4)])
    applied = sorted(json.loads(o) for o in outs)
    assert applied == [[], [], [], [name for name, _ in MIGRATIONS]]


def test_processes_opening_a_fresh_database_at_once_all_start(pg_url: str, spawn: Spawn) -> None:
    names = [f"replica{i}" for i in range(4)]
    assert release([spawn(OPEN, pg_url, name) for name in names]) == names
    store = open_store(pg_url)
    assert store.all_thread_ids() == names
    store.close()


# -- writers racing on one thread ------------------------------------------------------


def test_eight_store_objects_race_for_each_seq_and_one_wins_each(pg_url: str) -> None:
    rounds = 25
    writers = [open_store(pg_url) for _ in range(8)]
    writers[0].create("t", [row(0)], status="running", title="t", origin="{}")
    barrier = threading.Barrier(len(writers))
    winners: dict[int, list[int]] = {seq: [] for seq in range(1, rounds + 1)}
    errors: list[BaseException] = []

    def write(i: int, store: Store) -> None:
        for seq in range(1, rounds + 1):
            barrier.wait()
            try:
                store.append("t", seq, [NewRow("x", json.dumps({"by": i}))], status=f"by{i}")
                winners[seq].append(i)
            except SeqConflict:
                pass
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [len(w) for w in winners.values()] == [1] * rounds
    reader = open_store(pg_url)
    events = reader.execute("SELECT seq, body FROM events WHERE thread_id = 't' ORDER BY seq")
    stored = events.fetchall()
    assert [seq for seq, _ in stored] == list(range(rounds + 1))
    assert [json.loads(body)["by"] for _, body in stored[1:]] == [w[0] for w in winners.values()]
    thread = reader.thread("t")
    assert thread is not None
    assert (thread.last_seq, thread.status) == (rounds, f"by{winners[rounds][0]}")
    for store in [*writers, reader]:
        store.close()


RACE = """
import json, sys
from store import NewRow, SeqConflict, open_store
url, name, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url)
print("ready", flush=True)
sys.stdin.readline()
won, lost = [], 0
while (last := store.thread("t").last_seq) < total:
    body = json.dumps({"by": name, "seq": last + 1})
    try:
        store.append("t", last + 1, [NewRow("x", body)], status="running")
        won.append(last + 1)
    except SeqConflict:
        lost += 1
print(json.dumps({"won": won, "lost": lost}))
"""


def test_eight_processes_appending_to_one_thread_leave_no_gap_and_no_duplicate(
    pg_url: str, spawn: Spawn
) -> None:
    total = 48
    store = open_store(pg_url)
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    names = [f"w{i}" for i in range(8)]
    outs = [json.loads(o) for o in release([spawn(RACE, pg_url, n, str(total)) for n in names])]
    won = {name: out["won"] for name, out in zip(names, outs, strict=True)}
    # Each seq was won by exactly one process, and the thread has every seq once.
    assert sorted(seq for seqs in won.values() for seq in seqs) == list(range(1, total + 1))
    stored = store.execute("SELECT seq, body FROM events WHERE thread_id = 't' ORDER BY seq")
    rows = stored.fetchall()
    assert [seq for seq, _ in rows] == list(range(total + 1))
    by_seq = {seq: name for name, seqs in won.items() for seq in seqs}
    assert all(json.loads(body) == {"by": by_seq[seq], "seq": seq} for seq, body in rows[1:])
    assert sum(out["lost"] for out in outs) > 0  # they did race
    assert store.thread("t").last_seq == total  # type: ignore[union-attr]
    store.close()


# -- NOTIFY ---------------------------------------------------------------------------


def listening(url: str, count: int = 1) -> bool:
    """Whether `count` sessions on the database listen for threadbot's changes."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = 'LISTEN threadbot'"
        ).fetchone()
    return found is not None and found[0] == count


@contextlib.contextmanager
def judging(store: Store) -> Iterator[Store]:
    """The store listening, as a runner's does (on a thread of its own), and
    so judging other runners: a store that does not listen never takes
    another runner for dead."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stopped = threading.Event()

    async def listen() -> None:
        try:
            await store.listen(lambda t, due: None)
        finally:
            stopped.set()  # its connection closed

    task = asyncio.run_coroutine_threadsafe(listen(), loop)
    assert isinstance(store, PostgresStore)
    until(lambda: store._judge_from <= time.monotonic(), timeout=10.0)
    try:
        yield store
    finally:
        task.cancel()
        assert stopped.wait(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def presence_free(url: str, owner: str) -> bool:
    """Whether nobody holds `owner`'s presence lock, asked without judging."""
    with psycopg.connect(url) as conn, conn.transaction():
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [owner]
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.anyio
async def test_listen_hears_appends_and_freed_leases_made_elsewhere_and_survives_a_restart(
    restartable_pg: tuple[pg.PostgresServer, str],
) -> None:
    server, url = restartable_pg
    listener, writer = open_store(url), open_store(url)
    heard: list[tuple[str, float | None]] = []
    arrived = asyncio.Event()

    def notify(thread_id: str, due_at: float | None) -> None:
        heard.append((thread_id, due_at))
        arrived.set()

    task = asyncio.create_task(listener.listen(notify))

    async def hear(expected: list[tuple[str, float | None]]) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while len(heard) < len(expected):
                    await arrived.wait()
                    arrived.clear()
        await asyncio.sleep(0.05)  # and nothing more comes
        assert heard == expected
        heard.clear()

    try:
        await asyncio.to_thread(until, lambda: listening(url))
        writer.create("t", [row(0)], status="waiting_for_human", title="t", origin="{}", due_at=1e9)
        await hear([("t", 1e9)])
        writer.append("t", 1, [row(1)], status="running", due_at=1234567890.125)
        await hear([("t", 1234567890.125)])
        writer.append("t", 2, [row(2)], status="running")
        await hear([("t", None)])
        assert writer.acquire("t", "runner-w", 30)
        writer.release("t", "runner-w")
        await hear([("t", None)])  # the freed lease
        # Anyone who may connect may NOTIFY: a payload of no meaning is
        # ignored, and the listener goes on.
        writer.execute("NOTIFY threadbot, 'x not-a-time'")
        writer.append("t", 3, [row(3)], status="running")
        await hear([("t", None)])
        assert not task.done()

        server.restart()
        took = await asyncio.to_thread(until, lambda: listening(url))
        assert not task.done() and took < 5
        for attempt in range(2):  # the writer's pooled connection went with the restart
            try:
                writer.append("t", 4, [row(4)], status="done")
                break
            except psycopg.OperationalError:
                assert attempt == 0
        await hear([("t", None)])
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        listener.close()
        writer.close()


# -- presence and takeover --------------------------------------------------------------

HOLD = """
import sys
from store import open_store
url, owner, *threads = sys.argv[1:]
store = open_store(url)
store.hold_presence(owner)
for thread_id in threads:
    assert store.acquire(thread_id, owner, 300)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_killed_runner_is_gone_at_once_and_its_threads_are_orphans(
    pg_url: str, spawn: Spawn
) -> None:
    store = open_store(pg_url)
    for thread_id, status, deliver_to in (
        ("dead-running", "running", ""),
        ("dead-undelivered", "waiting_for_human", " slack "),
        ("dead-done", "done", ""),
        ("live-running", "running", ""),
        ("mine", "running", ""),
        ("unheld-old", "running", ""),
    ):
        store.create(
            thread_id, [row(0)], status=status, title=thread_id, origin="{}", deliver_to=deliver_to
        )
    # Nobody has held this one for a while: its runner died before taking a lease.
    store.execute(
        "UPDATE threads SET updated_at = ? WHERE id = 'unheld-old'", [now_iso(time.time() - 60)]
    )
    dead = spawn(HOLD, pg_url, "runner-dead", "dead-running", "dead-undelivered", "dead-done")
    live = spawn(HOLD, pg_url, "runner-live", "live-running")
    ready(dead)
    ready(live)
    store.hold_presence("runner-me")
    assert store.acquire("mine", "runner-me", 300)
    assert store.owner_gone("runner-never-started") is False  # not listening: no judging
    stack = contextlib.ExitStack()
    stack.enter_context(judging(store))

    assert store.owner_gone("runner-dead") is False
    assert store.owner_gone("runner-live") is False
    assert store.owner_gone("runner-never-started") is True
    assert store.orphans("runner-me", ["slack"]) == ["unheld-old"]
    # Another store object (another replica) sees this process as alive too.
    other = stack.enter_context(judging(open_store(pg_url)))
    assert other.owner_gone("runner-me") is False

    killed = time.monotonic()
    dead.kill()
    gone_after = until(lambda: store.owner_gone("runner-dead"), timeout=2.0, every=0.005)
    print(f"\nowner_gone after SIGKILL: {gone_after * 1000:.1f} ms")
    assert time.monotonic() - killed < 2.0
    assert sorted(store.orphans("runner-me", ["slack"])) == [
        "dead-running",
        "dead-undelivered",
        "unheld-old",
    ]
    assert sorted(store.orphans("runner-me", ["email"])) == ["dead-running", "unheld-old"]
    # The caller's own thread (above) is no orphan to another replica either: its runner lives.
    assert "mine" not in other.orphans("runner-other", ["slack"])
    assert store.owner_gone("runner-live") is False
    # The lease of the dead runner can be taken, by stealing from it.
    assert not store.acquire("dead-running", "runner-me", 30)
    assert store.acquire("dead-running", "runner-me", 30, steal_from="runner-dead")
    assert "dead-running" not in store.orphans("runner-me", ["slack"])
    # A running thread nobody holds is left a moment to the runner that just wrote it.
    store.create("unheld-new", [row(0)], status="running", title="new", origin="{}")
    assert sorted(store.orphans("runner-me", ["slack"])) == ["dead-undelivered", "unheld-old"]
    stack.close()
    other.close()
    store.close()


# -- a server restart -----------------------------------------------------------------


def test_a_store_keeps_working_after_the_server_restarts(
    restartable_pg: tuple[pg.PostgresServer, str],
) -> None:
    server, url = restartable_pg
    store, idle = open_store(url), open_store(url)
    store.create("t", [row(0)], status="running", title="t", origin="{}")
    assert idle.thread("t") is not None

    failed: list[BaseException] = []

    def in_flight() -> None:
        try:
            store.execute("SELECT pg_sleep(30)")
        except BaseException as e:
            failed.append(e)

    def sleeping() -> bool:
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            ).fetchone()
        return found == (1,)

    caller = threading.Thread(target=in_flight)
    caller.start()
    until(sleeping)
    server.restart()
    caller.join(10)
    assert not caller.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], psycopg.OperationalError)
    assert "terminating connection due to administrator command" in str(failed[0])
    # The next call gets a new connection from the pool.
    assert store.append("t", 1, [row(1)], status="done") == 1

    # A store that was idle meanwhile reads at once: a read that meets a
    # broken connection is tried again on a new one.
    found = idle.thread("t")
    assert found is not None and (found.status, found.last_seq) == ("done", 1)
    store.close()
    idle.close()


@pytest.mark.anyio
async def test_a_listening_runner_is_present_again_soon_after_a_server_restart(
    restartable_pg: tuple[pg.PostgresServer, str],
) -> None:
    """Its presence lock went with the restart; until it holds it again,
    other replicas would take its threads over."""
    server, url = restartable_pg
    runner, other = open_store(url), open_store(url)
    runner.hold_presence("runner-a")
    task = asyncio.create_task(runner.listen(lambda t, due: None))
    try:
        await asyncio.to_thread(until, lambda: listening(url))
        assert other.owner_gone("runner-a") is False
        server.restart()
        other.close()
        other = open_store(url)

        def present() -> bool:
            return not presence_free(url, "runner-a")

        back = await asyncio.to_thread(until, present, 5.0)
        print(f"\npresence back after the restart: {back * 1000:.0f} ms")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        runner.close()
        other.close()


# -- threadbot migrate ------------------------------------------------------------------


def threadbot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadbot", *args],
        cwd=REPO,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def counts(db: str) -> dict[str, int]:
    store = open_store(db)
    try:
        return {t: store.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        store.close()


def pending(db: str) -> list[tuple[str, str]]:
    store = open_store(db)
    try:
        return [(d.id, d.payload) for d in Outbox(store).pending()]
    finally:
        store.close()


def printed_counts(stdout: str) -> dict[str, int]:
    found = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "rows":
            found[parts[0]] = int(parts[1])
    return found


async def views(db: str, fake: FakeOpenAI, ids: list[str]) -> list[dict[str, Any]]:
    model = OpenAIModel("fake-model", base_url=fake.base_url, api_key="test")
    bot = ThreadBot(open_store(db), model, load_tools("tests.ledger_tools"))
    try:
        return [bot.get(thread_id).json() for thread_id in ids]
    finally:
        await bot.close()
        bot.store.close()


@pytest.mark.anyio
async def test_migrate_copies_a_deployment_to_postgresql_and_back(
    tmp_path: Path, pg_url: str, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    source = str(tmp_path / "threadbot.db")
    model = OpenAIModel("fake-model", base_url=fake_openai.base_url, api_key="test")
    # Webhooks stored and not sent (nothing sends them here): they move too.
    hooks = Webhooks(("http://127.0.0.1:9/hooks",), new_secret())
    bot = ThreadBot(
        open_store(source), model, load_tools("tests.ledger_tools"), retry_delay=0, webhooks=hooks
    )
    try:
        fake_openai.add(ask("Which version?"), text("Deploying 1.4.2."), text("Hello."))
        asked = await bot.launch("deploy the api", routes=["slack:C1:17.1"])
        await settled(bot, asked)
        await bot.respond(asked, "1.4.2")
        await settled(bot, asked)
        greeted = await bot.launch("say hello")
        await settled(bot, greeted)
        fork = await bot.fork(asked, 1)  # back at the question: waits again
        await settled(bot, fork)
        secret = bot.secret("email")
    finally:
        await bot.close()
        bot.store.close()
    ids = [asked, greeted, fork]
    made = threadbot("--db", source, "tokens", "create", "--person", "ann", "--scope", "read")
    assert made.returncode == 0, made.stderr
    token = made.stdout.split()[0]
    before = await views(source, fake_openai, ids)
    assert [v["status"] for v in before] == ["done", "done", "waiting_for_human"]

    copied = threadbot("migrate", "--from", source, "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    expected = counts(source)
    assert expected["threads"] == 3 and expected["routes"] == 1 and expected["tokens"] == 1
    # waiting, resumed, done; done; waiting (the fork)
    assert expected["webhook_outbox"] == 5
    assert printed_counts(copied.stdout) == expected
    assert counts(pg_url) == expected
    assert await views(pg_url, fake_openai, ids) == before
    target = open_store(pg_url)
    try:
        assert isinstance(target, PostgresStore)
        found = Credentials(target).check_token(token)
        assert found is not None and (found.person, found.scope) == ("ann", "read")
        assert target.meta("email_secret", "another") == secret
        assert target.route("slack:C1:17.1") == asked
        assert [(d.id, d.payload) for d in Outbox(target).pending()] == pending(source)
        forked = target.thread(fork)
        assert forked is not None and (forked.parent_id, forked.parent_seq) == (asked, 1)
    finally:
        target.close()

    # Into a database that already holds threads: refused, nothing changed.
    again = threadbot("migrate", "--from", source, "--to", pg_url)
    assert again.returncode == 1
    assert "the target already holds threads: copy into an empty database" in again.stderr
    assert counts(pg_url) == expected

    same = threadbot("migrate", "--from", pg_url, "--to", pg_url)
    assert same.returncode == 1 and "--from and --to name the same database" in same.stderr

    # And back, from PostgreSQL to a new SQLite file.
    back = str(tmp_path / "back.db")
    returned = threadbot("migrate", "--from", pg_url, "--to", back)
    assert returned.returncode == 0, returned.stderr
    assert counts(back) == expected
    assert await views(back, fake_openai, ids) == before
    store = open_store(back)
    try:
        assert Credentials(store).check_token(token) is not None
        assert store.meta("email_secret", "another") == secret
    finally:
        store.close()


# -- a database that cannot be used is said at once and plainly --------------------------


def test_a_database_that_cannot_be_reached_or_named_is_refused_at_once(
    postgres: pg.Postgres, tmp_path: Path
) -> None:
    """No traceback, no 30 s of retries: the server's reason, exit 1, and no
    SQLite file made out of a mistyped URL."""
    missing = postgres.url.rsplit("/", 1)[0] + "/no_such_database"
    cases = {
        missing: 'database "no_such_database" does not exist',
        "postgresql://postgres@127.0.0.1:1/x": "Connection refused",
        "postgresql://postgres@127.0.0.1:notaport/x": 'invalid integer value "notaport"',
        "postgresql+psycopg://postgres@127.0.0.1/x": "neither a postgresql:// URL",
    }
    for db, reason in cases.items():
        started = time.monotonic()
        done = threadbot("--db", db, "--local", "threads")
        assert time.monotonic() - started < 15
        assert done.returncode == 1, done
        assert done.stderr.startswith("threadbot: ") and reason in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not list(REPO.glob("postgresql+psycopg*"))


def test_migrate_refuses_a_source_file_that_does_not_exist(pg_url: str, tmp_path: Path) -> None:
    typo = tmp_path / "threadbot-typo.db"
    done = threadbot("migrate", "--from", str(typo), "--to", pg_url)
    assert done.returncode == 1 and "no such database file" in done.stderr
    assert not typo.exists()  # not made empty and "copied"
    assert counts(pg_url)["threads"] == 0


def test_the_banner_shows_no_password() -> None:
    from threadbot.serve import _without_password

    shown = _without_password("postgresql://bot:s3cret@db:5432/tb?sslmode=require&password=p4ss")
    assert "s3cret" not in shown and "p4ss" not in shown
    assert shown == "postgresql://bot:***@db:5432/tb?sslmode=require&password=***"


def test_migrate_refuses_a_running_source_and_leaves_no_half_copy(
    pg_url: str, tmp_path: Path
) -> None:
    source_db = str(tmp_path / "source.db")
    source = open_store(source_db)
    source.create("t", [row(0), row(1)], status="running", title="t", origin="{}")
    assert source.acquire("t", "a server", 30.0)
    done = threadbot("migrate", "--from", source_db, "--to", pg_url)
    assert done.returncode == 1 and "stop it first" in done.stderr, done.stderr
    assert counts(pg_url)["threads"] == 0

    # Stopped, but its thread list disagrees with its events: the copy is
    # checked before it commits, and nothing of it stays.
    source.release("t", "a server")
    source.execute("UPDATE threads SET last_seq = 0 WHERE id = 't'")
    done = threadbot("migrate", "--from", source_db, "--to", pg_url)
    assert done.returncode == 1 and "threadbot reindex" in done.stderr, done.stderr
    assert counts(pg_url)["threads"] == 0 and counts(pg_url)["events"] == 0
    source.close()
