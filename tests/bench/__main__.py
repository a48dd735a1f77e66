"""How threadbot's costs grow with a thread's length.

One thread does round-trips: the model asks a question (`request_human_input`,
~200 bytes), a person answers (~200 bytes), the agent resumes and asks the
next. The model is an instant OpenAI-compatible server on 127.0.0.1 and is
called through the real `openai` client; the database is a real SQLite file.

Printed for each thread length (in events):
- append: one event appended by the store at that length (p50, p99)
- resume: a response received by the Python API → the next model request
  arrives at the model server (p50, p99 over the last round-trips)
- bytes/round-trip: database growth per round-trip near that length (on
  SQLite, over the last 10 round-trips; on PostgreSQL, whose tables grow by
  whole 8 KB pages, over all round-trips since the previous length: the
  `pg_total_relation_size` of events, threads and routes, which holds their
  indexes, TOAST and row versions not yet vacuumed)

    python -m tests.bench [--sizes 10,100,1000] [--json FILE]
        [--postgres | --postgres-url URL]

`--compare-langgraph`, `--scale` (or only its acks: `--acks on|off`) and
`--model-latency` run the other benchmarks (tests/bench/approvals.py,
scale.py, latency.py). `--postgres` (a throwaway server) or `--postgres-url`
runs this one, `--compare-langgraph` or `--scale` on PostgreSQL instead (see
tests/bench/databases.py).
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
from store import EventStore, NewRow, Store, open_store
from threadbot.process import tune_for_serving

from .databases import PostgresDatabases, give_back_space, growth, relation_bytes, table_bytes
from .model_server import ANSWER, ModelServer


def _db_bytes(store: Store) -> int:
    """Bytes the database holds: tables and indexes, page headers included,
    free space in pages left out (page counts would round to 4 KB). On
    PostgreSQL, see `relation_bytes`."""
    if not isinstance(store, EventStore):
        return relation_bytes(store)
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


async def _measure(sizes: list[int], db: str) -> list[dict[str, Any]]:
    """`db`: a SQLite path or a PostgreSQL URL."""
    model_server = await ModelServer.start()
    store = open_store(db)
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
    postgres = not isinstance(store, EventStore)
    # On PostgreSQL: the tables' sizes and the round-trips done at the previous size.
    grown_from = (table_bytes(store) if postgres else {}, 0)
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
            if postgres:
                grown = growth(*grown_from, table_bytes(store), len(resumes))
            else:
                grown = {"bytes_per_round_trip": (bytes_now - marks[target]) / max(1, taken)}
            append = _append_latency(store, thread_id)
            rows.append(
                {
                    "events": n_events,
                    "append_p50_ms": statistics.median(append) * 1e3,
                    "append_p99_ms": _pct(append, 0.99) * 1e3,
                    "resume_p50_ms": statistics.median(recent) * 1e3,
                    "resume_p99_ms": _pct(recent, 0.99) * 1e3,
                    "round_trips_measured": taken,
                    **grown,
                    "db_bytes": bytes_now,
                }
            )
            if postgres:
                grown_from = (table_bytes(store), len(resumes))
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


def _append_latency(store: Store, thread_id: str, samples: int = 200) -> list[float]:
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
    with store.atomic():
        store.execute("DELETE FROM events WHERE thread_id = ?", [scratch])
        store.execute("DELETE FROM threads WHERE id = ?", [scratch])
    give_back_space(store)
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
    p.add_argument(
        "--postgres",
        action="store_true",
        help="on PostgreSQL: a throwaway server of our own, a fresh database per benchmark "
        "(for this benchmark, --compare-langgraph and --scale)",
    )
    p.add_argument(
        "--postgres-url",
        metavar="URL",
        help="as --postgres, on the server at URL (databases are created there and dropped)",
    )
    args = p.parse_args(argv)
    postgres = args.postgres or args.postgres_url
    if postgres and (args.model_latency or args.acks):
        p.error("--postgres applies to this benchmark, --compare-langgraph and --scale only")
    if args.postgres and args.postgres_url:
        p.error("--postgres starts a server of its own: give it or --postgres-url, not both")
    if args.postgres_url:
        import psycopg

        try:
            psycopg.connect(args.postgres_url, connect_timeout=10).close()
        except psycopg.Error as e:
            p.error(f"--postgres-url: cannot connect: {e}")
    if postgres:
        with PostgresDatabases(args.postgres_url) as databases:
            return _run(args, databases)
    return _run(args, None)


def _run(args: argparse.Namespace, databases: PostgresDatabases | None) -> int:
    if args.model_latency:
        from .latency import main as latency

        more = ["--json", args.json] if args.json else []
        return latency(["--latency", args.model_latency, *more])
    if args.acks:
        from .scale import run_acks

        return run_acks(args.json, args.acks)
    if args.scale:
        from .scale import run_scale

        return run_scale(args.json, databases)
    if args.compare_langgraph:
        from .approvals import compare

        return compare([int(n) for n in args.round_trips.split(",")], args.json, databases)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        db = databases.new("round_trips") if databases else str(Path(d) / "bench.db")
        rows = asyncio.run(_measure(sizes, db))
    machine: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    print(_table(rows))
    if databases:
        machine["postgres"] = databases.version()
        print(
            f"PostgreSQL {machine['postgres']}: bytes/round-trip is the growth of events, threads "
            "and routes with their indexes and TOAST, in whole 8 KB pages, since the previous "
            "length; by table:"
        )
        for r in rows:
            tables = ", ".join(
                f"{t} {b:,.0f}" for t, b in r["bytes_per_round_trip_by_table"].items()
            )
            print(f"  {r['events']} events ({r['bytes_over_round_trips']} round-trips): {tables}")
    print(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
