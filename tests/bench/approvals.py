"""The approval round-trip scenario, on threadbot and on LangGraph.

Each round-trip: the model proposes a tool call (about 800 bytes of
arguments) → the thread waits for approval → approved → the tool returns
about 200 bytes → the next model request. Resume is measured from the
approval received to the next request arriving at a local model server,
through the real `openai` client. Bytes are what SQLite holds in its pages
(dbstat), for both.
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
from store import EventStore
from threadbot.process import tune_for_serving

from .__main__ import _pct
from .model_server import ModelServer

ARGS = {"service": "api", "version": "1.4.2", "notes": "x" * 760}
RESULT = "deployed api 1.4.2; " + "y" * 180
LANGGRAPH = ["langgraph==1.2.24", "langgraph-checkpoint-sqlite==3.1.2"]


@tool(requires_approval=True)
def deploy(service: str, version: str, notes: str) -> str:
    """Deploy (needs approval)."""
    return RESULT


def used_bytes(conn: Any) -> int:
    return int(conn.execute("SELECT sum(pgsize - unused) FROM dbstat").fetchone()[0])


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def cold_load_ms(db: Path, thread_id: str, runs: int = 5) -> float:
    """Open the store and load the thread in a new process; the median of
    `runs` processes."""
    code = (
        "import time\n"
        "from store import EventStore\n"
        "from bot.log import ThreadLog\n"
        f"store = EventStore({str(db)!r})\n"
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


async def threadbot_run(round_trips: list[int], work: Path) -> list[dict[str, Any]]:
    model_server = await ModelServer.start("deploy", json.dumps(ARGS))
    db = work / "threadbot.db"
    store = EventStore(db)
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
    for target in sorted(round_trips):
        while done < target:
            pending = bot.get(thread_id).state.pending
            assert pending is not None and pending.kind == "approval"
            before_bytes = used_bytes(store.db.conn)
            t0 = time.perf_counter()
            await bot.decide(thread_id, True, call_id=pending.call_id)
            resumes.append(await model_server.arrival_after(t0) - t0)
            await bot.settle(thread_id)
            written.append(used_bytes(store.db.conn) - before_bytes)
            done += 1
            if done == 375:  # 2 + 4 x 375 = 1,502 events: the cold-load target's size
                store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cold_1500 = cold_load_ms(db, thread_id)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        last = resumes[-50:] if done >= 100 else resumes[-10:]
        rows.append(
            {
                "round_trips": done,
                "events": len(bot.get(thread_id).events),
                "db_bytes": used_bytes(store.db.conn),
                "db_file_bytes": file_bytes(db),
                "first_written_bytes": written[0],
                "last_written_bytes": written[-1],
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


def langgraph_run(round_trips: list[int], work: Path) -> list[dict[str, Any]]:
    env_dir = work / "langgraph-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *LANGGRAPH], check=True, capture_output=True
    )
    script = Path(__file__).with_name("langgraph_scenario.py")
    out = subprocess.run(
        [str(python), str(script), ",".join(map(str, round_trips))],
        check=True,
        capture_output=True,
        text=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def compare(round_trips: list[int], json_path: str | None) -> int:
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        ours = asyncio.run(threadbot_run(round_trips, work))
        theirs = langgraph_run(round_trips, work)
    head = (
        f"{'round-trips':>11} | {'':>9} | {'DB bytes':>12} | {'last RT wrote':>13} | "
        f"{'resume p50':>10} | {'resume p99':>10} | {'cold load':>9}"
    )
    lines = [head, "-" * len(head)]
    for a, b in zip(ours, theirs, strict=True):
        for name, r, load in (
            ("threadbot", a, a["load_cold_ms"]),
            ("LangGraph", b, b["get_state_cold_ms"]),
        ):
            lines.append(
                f"{r['round_trips']:>11} | {name:>9} | {r['db_bytes']:>12,} | "
                f"{r['last_written_bytes']:>13,} | {r['resume_p50_ms']:>7.2f} ms | "
                f"{r['resume_p99_ms']:>7.2f} ms | {load:>6.2f} ms"
            )
        lines.append(
            f"{'':>11} | {'ratio':>9} | {b['db_bytes'] / a['db_bytes']:>11.0f}x | "
            f"{b['last_written_bytes'] / max(1, a['last_written_bytes']):>12.0f}x | "
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
    print("\n".join(lines))
    report = {
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()},
        "threadbot": ours,
        "langgraph": theirs,
    }
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0
