"""How threadbot's costs grow with a thread's length.

One thread does round-trips: the model asks a question (`request_human_input`,
~200 bytes), a person answers (~200 bytes), the agent resumes and asks the
next. The model is an instant OpenAI-compatible server on 127.0.0.1 and is
called through the real `openai` client; the database is a real SQLite file.

Printed for each thread length (in events):
- append: one event appended by the store at that length (p50, p99)
- resume: a response received by the Python API → the next model request
  arrives at the model server (p50, p99 over the last round-trips)
- bytes/round-trip: database growth per round-trip near that length

    python -m tests.bench [--sizes 10,100,1000] [--json FILE]

`--compare-langgraph`, `--scale` (or only its acks: `--acks on|off`) and
`--model-latency` run the other benchmarks (tests/bench/approvals.py,
scale.py, latency.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bot import OpenAIModel, ThreadBot, Toolbox
from bot.events import Delivered
from store import EventStore, NewRow
from threadbot.process import tune_for_serving

from .model_server import ANSWER, ModelServer


def _db_bytes(store: EventStore) -> int:
    """Bytes the database holds: tables and indexes, page headers included,
    free space in pages left out (page counts would round to 4 KB)."""
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        used = store.db.execute("SELECT sum(pgsize - unused) FROM dbstat").fetchone()[0]
    except sqlite3.OperationalError:  # SQLite built without dbstat
        page_size = store.db.execute("PRAGMA page_size").fetchone()[0]
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        used = pages * page_size
    return int(used)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(sizes: list[int], workdir: Path) -> list[dict[str, Any]]:
    model_server = await ModelServer.start()
    store = EventStore(workdir / "bench.db")
    model = OpenAIModel("instant", base_url=model_server.base_url)
    bot = ThreadBot(store, model, Toolbox(), max_turns=10**9)
    tune_for_serving()  # as `threadbot serve` does
    thread_id = await bot.launch("start")
    await bot.settle(thread_id)

    rows: list[dict[str, Any]] = []
    resumes: list[tuple[int, float]] = []  # (events before the answer, seconds)
    sizes_left = sorted(sizes)
    window = 10  # round-trips measured before each size is reached
    marks: dict[int, int] = {}
    while sizes_left:
        n_events = len(bot.get(thread_id).events)
        target = sizes_left[0]
        if n_events + 2 * window >= target and target not in marks:
            marks[target] = _db_bytes(store)
            marks[-target] = len(resumes)
        if n_events >= target:
            bytes_now = _db_bytes(store)
            taken = len(resumes) - marks[-target]
            recent = [s for _, s in resumes[marks[-target] :]]
            append = _append_latency(store, thread_id)
            rows.append(
                {
                    "events": n_events,
                    "append_p50_ms": statistics.median(append) * 1e3,
                    "append_p99_ms": _pct(append, 0.99) * 1e3,
                    "resume_p50_ms": statistics.median(recent) * 1e3,
                    "resume_p99_ms": _pct(recent, 0.99) * 1e3,
                    "round_trips_measured": taken,
                    "bytes_per_round_trip": (bytes_now - marks[target]) / max(1, taken),
                    "db_bytes": bytes_now,
                }
            )
            sizes_left.pop(0)
            continue
        view = bot.get(thread_id)
        call_id = view.state.pending.call_id if view.state.pending else None
        t0 = time.perf_counter()
        await bot.respond(thread_id, ANSWER, call_id=call_id)
        resumes.append((len(view.events), await model_server.arrival_after(t0) - t0))
        await bot.settle(thread_id)

    await bot.close()
    await model_server.stop()
    store.close()
    return rows


def _append_latency(store: EventStore, thread_id: str, samples: int = 200) -> list[float]:
    """Append to a scratch copy of the thread at the same length, so the
    measured thread is not changed."""
    scratch = f"{thread_id}-append"
    bodies = store.load(thread_id)
    store.create(
        scratch,
        [NewRow("x", b) for b in bodies],
        status="running",
        title="scratch",
        origin="{}",
    )
    body = Delivered(of_seq=1, channel="bench", refs={"ts": "1700000000.000100"}).model_dump_json()
    seq = len(bodies)
    out: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        store.append(scratch, seq, [NewRow("delivered", body)], status="running")
        out.append(time.perf_counter() - t0)
        seq += 1
    with store.db.atomic():
        store.db.execute("DELETE FROM events WHERE thread_id = ?", [scratch])
        store.db.execute("DELETE FROM threads WHERE id = ?", [scratch])
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'events':>7} | {'append p50':>10} | {'append p99':>10} | {'resume p50':>10} | "
        f"{'resume p99':>10} | {'bytes/round-trip':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['events']:>7} | {r['append_p50_ms']:>7.3f} ms | {r['append_p99_ms']:>7.3f} ms | "
            f"{r['resume_p50_ms']:>7.3f} ms | {r['resume_p99_ms']:>7.3f} ms | "
            f"{r['bytes_per_round_trip']:>16.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--sizes", default="10,100,1000", help="thread lengths in events")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--compare-langgraph",
        action="store_true",
        help="also run the approval scenario here and on LangGraph (in a throwaway venv)",
    )
    p.add_argument("--round-trips", default="10,100,500", help="for --compare-langgraph")
    p.add_argument(
        "--scale",
        action="store_true",
        help="concurrency, paused threads' memory, listing, and acks under load",
    )
    p.add_argument(
        "--acks",
        choices=["on", "off"],
        help="only the acks under load of --scale, with THREADBOT_TUNE on or off",
    )
    p.add_argument(
        "--model-latency",
        metavar="SECONDS",
        help="the approval scenario against a model this slow (e.g. 0.3,2): "
        "what a person waits for after approving",
    )
    args = p.parse_args(argv)
    if args.model_latency:
        from .latency import main as latency

        more = ["--json", args.json] if args.json else []
        return latency(["--latency", args.model_latency, *more])
    if args.acks:
        from .scale import run_acks

        return run_acks(args.json, args.acks)
    if args.scale:
        from .scale import run_scale

        return run_scale(args.json)
    if args.compare_langgraph:
        from .approvals import compare

        return compare([int(n) for n in args.round_trips.split(",")], args.json)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        rows = asyncio.run(_measure(sizes, Path(d)))
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    print(_table(rows))
    print(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
