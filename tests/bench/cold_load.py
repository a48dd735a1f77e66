"""How long a fresh process takes to read a long thread.

Builds the thread the approval scenario makes after 375 round-trips (1,502
events: the launch, then a call with ~800 bytes of arguments, its approval,
`tool_started` and a ~200-byte result per round-trip, and the pending call),
then opens the store and loads it in `--runs` new processes, each timed
alone. Prints each time and the median.

    python -m tests.bench.cold_load [--runs 15] [--db FILE]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bot.events import Approval, Event, Source, ToolCall, ToolResult, ToolStarted, UserMessage
from bot.log import ThreadLog
from store import EventStore

from .approvals import ARGS, RESULT

THREAD = "cold"
OPS = Source(channel="http", name="ops", auth="operator", admin=True)


def build(db: Path, round_trips: int = 375) -> int:
    """The thread, written once; returns its length."""
    events: list[Event] = [UserMessage(text="deploy the api", source=OPS)]
    for i in range(round_trips + 1):
        call_id = f"call_{i:012d}"
        events.append(
            ToolCall(call_id=call_id, name="deploy", arguments=ARGS, requires_approval=True)
        )
        if i == round_trips:
            break  # the pending call
        events += [
            Approval(call_id=call_id, approved=True, source=OPS),
            ToolStarted(call_id=call_id),
            ToolResult(call_id=call_id, output=RESULT),
        ]
    store = EventStore(db)
    ThreadLog(store).create_sync(THREAD, events)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return len(events)


_LOAD = """
import time
from store import EventStore
from bot.log import ThreadLog
store = EventStore({db!r})
t0 = time.perf_counter()
thread = ThreadLog(store).load({thread!r})
print(time.perf_counter() - t0, len(thread.events))
"""


def cold_loads(db: Path, runs: int) -> list[float]:
    """Milliseconds to load the thread, one new process per run."""
    code = _LOAD.format(db=str(db), thread=THREAD)
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.split()[0]) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.cold_load", description=__doc__)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--db", help="use (or build) this database instead of a temporary one")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        db = Path(args.db) if args.db else Path(d) / "cold.db"
        if not db.exists():
            build(db)
        times = cold_loads(db, args.runs)
    print(" ".join(f"{t:.2f}" for t in times))
    print(f"cold load of 1,502 events: median {statistics.median(times):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
