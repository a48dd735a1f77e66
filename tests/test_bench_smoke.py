"""The benchmark script runs and prints its table and JSON (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from . import pg
from .fakes import REPO


def test_benchmark_runs_small() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--sizes", "10,30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, _, rest = out.stdout.partition("\n{")
    assert "resume p50" in table and "bytes/round-trip" in table
    report = json.loads("{" + rest)
    assert [r["events"] for r in report["rows"]] == [10, 30]
    for row in report["rows"]:
        assert row["resume_p50_ms"] > 0
        assert row["bytes_per_round_trip"] > 0
    assert out.stderr == ""


def test_approval_scenario_runs_small(tmp_path: Path) -> None:
    import asyncio

    from .bench.approvals import threadbot_run

    rows = asyncio.run(threadbot_run([2, 4], tmp_path))
    assert [r["round_trips"] for r in rows] == [2, 4]
    assert rows[-1]["events"] == 1 + 4 * 4 + 1  # launch, 4 per round-trip, the pending call
    assert all(r["resume_p50_ms"] > 0 and r["load_cold_ms"] > 0 for r in rows)


def test_http_latency_runs_small() -> None:
    """The HTTP benchmark against a real `threadbot serve`: every request it
    times got the status a person's click gets."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.http_latency", "--threads", "3", "--pause", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, _, rest = out.stdout.partition("\n{")
    assert "approval POST" in table and "thread GET" in table
    (row,) = json.loads("{" + rest)["rows"]
    for kind in ("approval POST", "answer POST", "thread GET"):
        assert row[kind]["n"] == 3
        assert 0 < row[kind]["p50_ms"] <= row[kind]["p99_ms"]


def test_timers_benchmark_runs_small() -> None:
    """Paused threads with reminders and deadlines, a few of them due within
    a short window: every due one fired once, none early, none not due yet."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.timers",
            "--threads",
            "200",
            "--due",
            "20",
            "--window",
            "6",
            "--serve-seconds",
            "1",
            "--no-baseline",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, _, rest = out.stdout.partition("\n{")
    assert "asyncio tasks while idle" in table and "deadlines due in the window" in table
    report = json.loads("{" + rest)
    for kind in ("remind", "deadline"):
        fired = report["fired"][kind]
        assert fired["due_in_window"] == fired["fired"] == 20, fired
        assert fired["missed"] == fired["fired_twice"] == fired["fired_early"] == 0, fired
        assert fired["fired_not_due"] == 0, fired
    assert report["timers"]["tasks_idle_max"] <= 2  # the one watcher (and its wait)
    assert report["timers"]["serve_rss_mb"] > 0


def test_benchmark_runs_small_on_postgres(postgres: pg.Postgres) -> None:
    """On a server it is given, the benchmark makes its own database and
    drops it at the end."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--sizes", "10,30", "--postgres-url", postgres.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    table, _, rest = out.stdout.partition("\n{")
    assert "resume p50" in table and "whole 8 KB pages" in table
    report = json.loads("{" + rest)
    assert report["machine"]["postgres"]
    assert [r["events"] for r in report["rows"]] == [10, 30]
    for row in report["rows"]:
        assert 0 < row["append_p50_ms"] <= row["append_p99_ms"]
        assert row["resume_p50_ms"] > 0
    # 10 round-trips of more than 1 KB each fill more than one 8 KB page.
    assert report["rows"][1]["bytes_over_round_trips"] == 10
    assert report["rows"][1]["bytes_per_round_trip"] > 0
    with psycopg.connect(postgres.url) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'threadbot_bench%'")
        assert left.fetchall() == []


def test_approval_scenario_runs_small_on_postgres(pg_url: str, tmp_path: Path) -> None:
    import asyncio

    from .bench.approvals import threadbot_run

    rows = asyncio.run(threadbot_run([2, 4], tmp_path, pg_url))
    assert [r["round_trips"] for r in rows] == [2, 4]
    assert rows[-1]["events"] == 1 + 4 * 4 + 1
    assert 0 < rows[0]["db_bytes"] <= rows[1]["db_bytes"]
    assert all(r["resume_p50_ms"] > 0 and r["load_cold_ms"] > 0 for r in rows)
    assert not list(tmp_path.iterdir())  # nothing went to a SQLite file


def test_two_replicas_share_one_postgres(pg_url: str) -> None:
    """The threads are split between two processes on one database, and
    every one of them ends done."""
    from .bench.scale import two_replicas

    report = two_replicas(20, 1, 0.01, pg_url, via="in-process")
    assert report["threads_done"] == 20
    assert all(s > 0 for s in report["replica_seconds"])
    assert report["seconds"] >= max(report["replica_seconds"])


def test_postgres_options_refused_where_they_do_not_apply(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from .bench.__main__ import main

    for argv, why in (
        (["--postgres", "--acks", "on"], "applies to this benchmark"),
        (["--postgres", "--postgres-url", "postgres://x"], "not both"),
        (["--postgres-url", "postgresql://postgres@127.0.0.1:1/x"], "cannot connect"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert why in capsys.readouterr().err
