"""The kill harness, small: a few kills, a few threads, every violation count 0.
The full run is `python -m tests.chaos` (200 kills). Of the nine threads, the
three started over HTTP ship with a reminder, an escalation and a deadline:
one approved at once, one left to the deadline, one racing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
