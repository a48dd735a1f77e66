"""The PostgreSQL fixtures: a database per test, isolated, on 127.0.0.1 only."""

from __future__ import annotations

import socket
import uuid

import psycopg
import pytest

from . import pg

_EARLIER: list[str] = []


def _names(postgres: pg.Postgres) -> set[str]:
    with psycopg.connect(postgres.url) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database_dropped_after(
    pg_url: str, postgres: pg.Postgres, run: int
) -> None:
    with psycopg.connect(pg_url) as conn:
        (name,) = conn.execute("SELECT current_database()").fetchall()[0]
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchall() == []
        # The next run must not see this.
        conn.execute("CREATE TABLE left_behind (x int)")
    assert name != "postgres"
    assert not _names(postgres) & set(_EARLIER), "an earlier test's database was not dropped"
    _EARLIER.append(name)


def test_a_table_in_one_database_is_absent_from_another(pg_url: str, postgres: pg.Postgres) -> None:
    other = f"threadbot_test_{uuid.uuid4().hex[:12]}"
    other_url = postgres.create_database(other)
    try:
        assert other_url != pg_url
        with psycopg.connect(pg_url) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(other_url) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        postgres.drop_database(other)


def test_a_database_is_dropped_with_a_connection_still_open(postgres: pg.Postgres) -> None:
    name = f"threadbot_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.create_database(name)) as conn:
        postgres.drop_database(name)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert name not in _names(postgres)


def test_committed_rows_are_read_by_another_connection(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_our_server_listens_on_127_0_0_1_only(postgres: pg.Postgres) -> None:
    if not isinstance(postgres, pg.PostgresServer):
        pytest.skip(f"{pg.ENV} names a server whose addresses are its own")
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        rules = conn.execute(
            "SELECT type, address, netmask, auth_method FROM pg_hba_file_rules"
        ).fetchall()
        assert rules == [("host", "127.0.0.1", "255.255.255.255", "trust")]
    # Another loopback address reaches the same host, but nothing listens there.
    with pytest.raises(ConnectionRefusedError), socket.socket() as s:
        s.settimeout(2)
        s.connect(("127.0.0.2", postgres.port))
