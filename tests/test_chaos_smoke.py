"""The kill harness, small: a few kills, a few threads, every violation count 0.
The full run is `python -m tests.chaos` (200 kills). Of the nine threads, the
three started over HTTP ship with a reminder, an escalation and a deadline:
one approved at once, one left to the deadline, one racing it. Then the same
with two replicas on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import pg
from .fakes import REPO


def test_kill_harness_small(tmp_path: Path) -> None:
    report_file = tmp_path / "chaos.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.chaos",
            "--kills",
            "8",
            "--threads",
            "9",
            "--seed",
            "7",
            "--json",
            str(report_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(report_file.read_text())
    assert report["kills_total"] >= 8
    assert report["threads_done"] == report["threads"] == 9
    assert set(report["violations"].values()) == {0}
    assert report["plans"]["deadline"] >= 1 and report["plans"]["race"] >= 1
    timers = report["timers"]
    assert timers["reminder"] >= 1 and timers["escalated"] >= 1
    assert timers["settled by the deadline"] >= 1


def test_kill_harness_two_replicas_on_postgres(tmp_path: Path, postgres: pg.Postgres) -> None:
    """Two servers on one PostgreSQL database, either killed at random and
    restarted after up to 3 s down: every thread finishes, no violation, and
    the threads a dead replica left are gone on with by a runner."""
    report_file = tmp_path / "chaos.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.chaos",
            "--postgres-url",
            postgres.url,
            "--replicas",
            "2",
            "--down",
            "3",
            "--kills",
            "6",
            "--threads",
            "9",
            "--seed",
            "7",
            "--json",
            str(report_file),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(report_file.read_text())
    assert (report["store"], report["replicas"]) == ("postgresql", 2)
    assert report["kills_total"] >= 6
    # Threads are launched over the run: every kill meets work left.
    assert report["kills_while_threads_unfinished"] >= 6
    assert report["threads_done"] == report["threads"] == 9
    assert set(report["violations"].values()) == {0}
    takeover = report["takeover"]
    assert takeover["deaths"] >= report["kills_total"]
    assert takeover["no_runner_append_after"] == 0
    for who in ("taken_over_by_another_replica", "resumed_first_by_the_restarted_replica"):
        assert takeover[who].get("max_s", 0) < 10, takeover
