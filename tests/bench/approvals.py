"""The approval round-trip scenario, on threadbot and on LangGraph.

Each round-trip: the model proposes a tool call (about 800 bytes of
arguments) → the thread waits for approval → approved → the tool returns
about 200 bytes → the next model request. Resume is measured from the
approval received to the next request arriving at a local model server,
through the real `openai` client. Bytes are what SQLite holds in its pages
(dbstat), for both.

On PostgreSQL (`--postgres`, `--postgres-url`) threadbot runs on a fresh
database there, LangGraph on SqliteSaver as before and, on a database of its
own on the same server, on PostgresSaver (langgraph-checkpoint-postgres).
Bytes there are the `pg_total_relation_size` of each one's tables (heap,
indexes, TOAST: values over about 2 KB are compressed), and what a
round-trip wrote is the growth since the previous size divided by the
round-trips in between (the tables grow by whole 8 KB pages).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

from bot import OpenAIModel, ThreadBot, Toolbox, tool
from store import EventStore, open_store
from threadbot.process import tune_for_serving

from .__main__ import _pct
from .databases import PostgresDatabases, growth, table_bytes
from .model_server import ModelServer

ARGS = {"service": "api", "version": "1.4.2", "notes": "x" * 760}
RESULT = "deployed api 1.4.2; " + "y" * 180
LANGGRAPH = ["langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2"]
LANGGRAPH_POSTGRES = ["langgraph-checkpoint-postgres==3.2.0", "psycopg[binary]"]


@tool(requires_approval=True)
def deploy(service: str, version: str, notes: str) -> str:
    """Deploy (needs approval)."""
    return RESULT


def used_bytes(conn: Any) -> int:
    return int(conn.execute("SELECT sum(pgsize - unused) FROM dbstat").fetchone()[0])


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def cold_load_ms(db: Path | str, thread_id: str, runs: int = 5) -> float:
    """Open the store and load the thread in a new process; the median of
    `runs` processes. The garbage of the imports is collected before the
    load: otherwise a full collection of it can fall inside the load (after
    psycopg's imports, it does)."""
    code = (
        "import gc, time\n"
        "from store import open_store\n"
        "from bot.log import ThreadLog\n"
        f"store = open_store({str(db)!r})\n"
        "gc.collect()\n"
        "t0 = time.perf_counter()\n"
        f"thread = ThreadLog(store).load({thread_id!r})\n"
        "print(time.perf_counter() - t0, len(thread.events))\n"
    )
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.split()[0]) * 1e3)
    return statistics.median(times)


async def threadbot_run(
    round_trips: list[int], work: Path, url: str | None = None
) -> list[dict[str, Any]]:
    """On a SQLite file in `work`, or on the PostgreSQL database at `url`."""
    model_server = await ModelServer.start("deploy", json.dumps(ARGS))
    db = url or work / "threadbot.db"
    store = open_store(db)
    sqlite = store if isinstance(store, EventStore) else None
    model = OpenAIModel("instant", base_url=model_server.base_url)
    bot = ThreadBot(store, model, Toolbox([deploy]), max_turns=10**9)
    tune_for_serving()  # as `threadbot serve` does
    thread_id = await bot.launch("deploy the api")
    await bot.settle(thread_id)
    rows: list[dict[str, Any]] = []
    resumes: list[float] = []
    written: list[int] = []
    done = 0
    cold_1500: float | None = None
    grown_from = ({} if sqlite else table_bytes(store), 0)  # PostgreSQL: at the previous size
    for target in sorted(round_trips):
        while done < target:
            pending = bot.get(thread_id).state.pending
            assert pending is not None and pending.kind == "approval"
            if sqlite:
                before_bytes = used_bytes(sqlite.db.conn)
            t0 = time.perf_counter()
            await bot.decide(thread_id, True, call_id=pending.call_id)
            resumes.append(await model_server.arrival_after(t0) - t0)
            await bot.settle(thread_id)
            if sqlite:
                written.append(used_bytes(sqlite.db.conn) - before_bytes)
            done += 1
            if done == 375:  # 2 + 4 x 375 = 1,502 events: the cold-load target's size
                if sqlite:
                    sqlite.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cold_1500 = cold_load_ms(db, thread_id)
        sizes: dict[str, Any]
        if sqlite:
            sqlite.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            sizes = {
                "db_bytes": used_bytes(sqlite.db.conn),
                "db_file_bytes": file_bytes(Path(db)),
                "first_written_bytes": written[0],
                "last_written_bytes": written[-1],
            }
        else:
            now = table_bytes(store)
            sizes = {"db_bytes": sum(now.values()), **growth(*grown_from, now, done)}
            grown_from = (now, done)
        last = resumes[-50:] if done >= 100 else resumes[-10:]
        rows.append(
            {
                "round_trips": done,
                "events": len(bot.get(thread_id).events),
                **sizes,
                "resume_p50_ms": statistics.median(last) * 1e3,
                "resume_p99_ms": _pct(last, 0.99) * 1e3,
                "load_cold_ms": cold_load_ms(db, thread_id),
                "load_cold_1502_events_ms": cold_1500,
            }
        )
    await bot.close()
    await model_server.stop()
    store.close()
    return rows


def langgraph_python(work: Path) -> Path:
    """A throwaway virtual environment with LangGraph and SqliteSaver; its python."""
    env_dir = work / "langgraph-venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *LANGGRAPH],
            check=True,
            capture_output=True,
        )
    return python


def add_postgres_saver(python: Path) -> str | None:
    """Install PostgresSaver beside SqliteSaver; None once done, else why not."""
    out = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *LANGGRAPH_POSTGRES],
        capture_output=True,
        text=True,
    )
    if out.returncode == 0:
        return None
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR")]
    return f"pip install {' '.join(LANGGRAPH_POSTGRES)} failed: " + " ".join(
        errors or out.stderr.splitlines()[-1:]
    )


def langgraph_run(
    round_trips: list[int], work: Path, url: str | None = None
) -> list[dict[str, Any]]:
    """With SqliteSaver, or with PostgresSaver on the database at `url`."""
    script = Path(__file__).with_name("langgraph_scenario.py")
    out = subprocess.run(
        [str(langgraph_python(work)), str(script), ",".join(map(str, round_trips))]
        + ([url] if url else []),
        check=True,
        capture_output=True,
        text=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def compare(
    round_trips: list[int], json_path: str | None, databases: PostgresDatabases | None = None
) -> int:
    """threadbot (on SQLite, or on PostgreSQL with `databases`) against
    LangGraph with SqliteSaver and, on PostgreSQL, with PostgresSaver."""
    missing: str | None = None
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        url = databases.new("threadbot") if databases else None
        ours = asyncio.run(threadbot_run(round_trips, work, url))
        sqlite_saver = "LangGraph SqliteSaver" if databases else "LangGraph"
        theirs = {sqlite_saver: langgraph_run(round_trips, work)}
        if databases:
            missing = add_postgres_saver(langgraph_python(work))
            if missing is None:
                theirs["LangGraph PostgresSaver"] = langgraph_run(
                    round_trips, work, databases.new("langgraph")
                )
    us = "threadbot on PostgreSQL" if databases else "threadbot"
    width = max(9, len(us), *map(len, theirs))
    head = (
        f"{'round-trips':>11} | {'':>{width}} | {'DB bytes':>12} | {'last RT wrote':>13} | "
        f"{'resume p50':>10} | {'resume p99':>10} | {'cold load':>9}"
    )
    lines = [head, "-" * len(head)]
    for i, a in enumerate(ours):
        lines.append(_line(us, a, a["load_cold_ms"], width))
        for name, rows in theirs.items():
            b = rows[i]
            lines.append(_line(name, b, b["get_state_cold_ms"], width))
            lines.append(
                f"{'':>11} | {'ratio':>{width}} | {b['db_bytes'] / a['db_bytes']:>11.0f}x | "
                f"{_wrote(b) / max(1, _wrote(a)):>12.0f}x | "
                f"{b['resume_p50_ms'] / a['resume_p50_ms']:>9.1f}x | "
                f"{b['resume_p99_ms'] / a['resume_p99_ms']:>9.1f}x |"
            )
    at_1502 = next(
        (r["load_cold_1502_events_ms"] for r in ours if r["load_cold_1502_events_ms"]), None
    )
    if at_1502 is not None:
        lines.append(
            f"threadbot cold load at 1,502 events (median of 5 fresh processes): {at_1502:.2f} ms"
        )
    if databases:
        lines.append(
            "* on PostgreSQL: the growth of the tables (with indexes and TOAST) since the "
            "previous size, per round-trip; threadbot's by table:"
        )
        for r in ours:
            tables = ", ".join(
                f"{t} {b:,.0f}" for t, b in r["bytes_per_round_trip_by_table"].items()
            )
            lines.append(f"  {r['round_trips']} round-trips: {tables}")
    if missing:
        lines.append(f"LangGraph's PostgresSaver not measured: {missing}")
    print("\n".join(lines))
    report: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()},
        "threadbot": ours,
        "langgraph": theirs[sqlite_saver],
    }
    if databases:
        report["machine"]["postgres"] = databases.version()
        report["langgraph_postgres"] = theirs.get("LangGraph PostgresSaver")
        report["langgraph_postgres_missing"] = missing
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0


def _wrote(r: dict[str, Any]) -> float:
    """What the last round-trip wrote (SQLite), or the mean since the previous size (PostgreSQL)."""
    return float(r.get("last_written_bytes", r.get("bytes_per_round_trip", 0)))


def _line(name: str, r: dict[str, Any], load: float, width: int) -> str:
    wrote = f"{_wrote(r):>13,.0f}" if "last_written_bytes" in r else f"{_wrote(r):>12,.0f}*"
    return (
        f"{r['round_trips']:>11} | {name:>{width}} | {r['db_bytes']:>12,} | "
        f"{wrote} | {r['resume_p50_ms']:>7.2f} ms | "
        f"{r['resume_p99_ms']:>7.2f} ms | {load:>6.2f} ms"
    )
