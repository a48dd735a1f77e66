"""What timers cost: many threads waiting for approval, each with a deadline.

The threads are written straight into a real SQLite file (no model turn per
thread): one thread is launched through the real runner with a tool that has
a reminder and a deadline, and each of the others is a copy of its two events
(the launch and the `tool_call` as the runner wrote it, `timers` and all)
with its own ids and its own reminder and deadline. A slice of them (`--due`)
is due during the first half of the measured window: reminders in its first
quarter, deadlines in its second; the rest are due from three minutes after
the window on, spread over the hour (their reminders halfway there). Nothing is due in the second
half of the window: that is the idle part.

A process of its own then opens the database with a `ThreadBot` (the
process settings of `threadbot serve`, the agent on its event loop; the model
is an instant fake in the process that says "noted" after a rejection) and
samples, over `--window` seconds: its RSS, the CPU it used while idle, the
asyncio tasks on its loop, and the SQL statements on the bot's connection
(the timer watcher's are those that read `due_at`). Lateness is read back
from the database afterwards: when the deadline's `approval` event (source
"the deadline") was made, minus the deadline; the same for reminders.

Then a real `threadbot serve` opens the same database, with nothing due for
a while, and its RSS and CPU are read from /proc over `--serve-seconds`.

The same is measured for the same number of threads waiting without timers,
the baseline.

    python -m tests.bench.timers [--threads 10000] [--due 500] [--window 120]
                                 [--serve-seconds 30] [--no-baseline] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot import DEADLINE, ModelReply, ScriptedModel, Source, ThreadBot, Toolbox, tool
from bot.context import Context
from bot.events import (
    Approval,
    Event,
    Reminder,
    Timers,
    ToolCall,
    UserMessage,
    load_event,
)
from bot.log import ThreadLog
from bot.model import call
from store import EventStore
from threadbot.process import tune_for_serving

from .__main__ import _pct

OPS = Source(channel="http", name="ops", auth="operator", admin=True)


@tool(requires_approval=True, remind_after="30m", deadline="1h")
def deploy(service: str) -> str:
    """Deploy a service (needs approval)."""
    return f"deployed {service}"


class Noted:
    """The model after a rejection: says so and ends the thread."""

    name = "instant fake model"

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        return ModelReply(text="noted: not deployed")


def _template(work: Path) -> tuple[UserMessage, ToolCall]:
    """A launch and the call it leads to, as the real runner writes them."""
    store = EventStore(work / "template.db")
    bot = ThreadBot(store, ScriptedModel.of(call("deploy", service="api")), Toolbox([deploy]))

    async def run() -> list[Event]:
        thread_id = await bot.launch("please deploy api", source=OPS)
        await bot.settle(thread_id)
        view = bot.get(thread_id)
        assert view.state.status == "waiting_for_approval", view.state.status
        await bot.close()
        return view.events

    events = asyncio.run(run())
    store.close()
    launch, made = events
    assert isinstance(launch, UserMessage) and isinstance(made, ToolCall)
    assert made.timers == Timers(remind_after=1800, deadline=3600), made.timers
    return launch, made


def build(
    db: Path, work: Path, n: int, due: int, start: float, window: float, *, timers: bool
) -> None:
    """`n` threads waiting for approval. With `timers`, `due` of them have
    their reminder and deadline in the first half of the window that begins
    at `start` (Unix time), the others after it, within the hour."""
    launch, made = _template(work)
    rng = random.Random(15)
    soon = set(rng.sample(range(n), due))
    made_at = time.time()
    ts = datetime.fromtimestamp(made_at, UTC)
    store = EventStore(db, durable=False)  # building the fixture only
    log = ThreadLog(store, cache_events=0)
    quarter = window / 4
    with store.db.atomic():
        for i in range(n):
            if i in soon:
                remind = start + rng.uniform(1, quarter)
                deadline = remind + quarter
            else:
                later = start + window + 180  # after the `threadbot serve` look too
                deadline = rng.uniform(later, start + 3600)
                remind = later + (deadline - later) / 2
            t = (
                Timers(remind_after=remind - made_at, deadline=deadline - made_at)
                if timers
                else None
            )
            log.create_sync(
                f"t{i:07d}",
                [
                    launch.model_copy(update={"text": f"please deploy service {i}", "ts": ts}),
                    made.model_copy(
                        update={
                            "call_id": f"call_{i:012d}",
                            "arguments": {"service": f"service-{i}"},
                            "ts": ts,
                            "timers": t,
                        }
                    ),
                ],
            )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


# -- the measured process ------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _serve_and_sample(db: str, start: float, window: float) -> dict[str, Any]:
    """Open the store as `threadbot serve` does (its process settings, every
    timer watched) and sample until `start + window`."""
    tune_for_serving()
    store = EventStore(db)
    statements: list[tuple[float, str]] = []
    store.db.conn.set_trace_callback(lambda sql: statements.append((time.time(), sql)))
    bot = ThreadBot(store, Noted(), Toolbox([deploy]))
    await bot.resume_all()
    ready = time.time()
    me = asyncio.current_task()
    idle_from = start + window / 2 + 1
    samples: list[tuple[float, int, int]] = []  # (time, tasks besides this one, RSS KB)
    idle_task_names: set[str] = set()
    cpu_idle: list[float] = []
    while (now := time.time()) < start + window:
        if now >= idle_from and not cpu_idle:
            cpu_idle.append(_cpu())
            cpu_idle.append(now)
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        if now >= idle_from:
            idle_task_names.update(t.get_coro().__qualname__ for t in tasks)  # type: ignore[union-attr]
        samples.append((now, len(tasks), _rss_kb()))
        await asyncio.sleep(0.25 if now < idle_from else 1.0)
    end = time.time()
    cpu_end = _cpu()
    await bot.close()
    store.close()

    def in_idle(t: float) -> bool:
        return idle_from <= t < end

    idle_minutes = (end - cpu_idle[1]) / 60
    idle_sql = [s for t, s in statements if in_idle(t)]
    watcher = [s for s in idle_sql if "due_at" in s]
    busy_tasks = [k for t, k, _ in samples if t < idle_from]
    idle_tasks = [k for t, k, _ in samples if in_idle(t)]
    return {
        "ready_before_start_s": round(start - ready, 2),
        "idle_seconds": round(end - cpu_idle[1], 1),
        "rss_mb_at_start": round(samples[0][2] / 1024, 1),
        "rss_mb_at_end": round(samples[-1][2] / 1024, 1),
        "rss_mb_max": round(max(r for _, _, r in samples) / 1024, 1),
        "cpu_s_per_minute_idle": round((cpu_end - cpu_idle[0]) / idle_minutes, 4),
        "cpu_s_total": round(cpu_end, 2),
        "tasks_idle_max": max(idle_tasks),
        "tasks_idle_min": min(idle_tasks),
        "tasks_while_firing_max": max(busy_tasks) if busy_tasks else None,
        "sql_per_minute_idle": round(len(idle_sql) / idle_minutes, 1),
        "watcher_sql_per_minute_idle": round(len(watcher) / idle_minutes, 1),
        "idle_tasks": sorted(idle_task_names),
        "watcher_sql": dict(
            collections.Counter(re.sub(r"[0-9.]+", "?", s) for s in watcher).most_common()
        ),
    }


def _measure(db: Path, start: float, window: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.timers",
            "--serve",
            str(db),
            "--start",
            repr(start),
            "--window",
            repr(window),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=window + 600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the measured process failed:\n{out.stderr}")
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def _proc(pid: int) -> tuple[float, int]:
    """CPU seconds a process has used, and its RSS in KB."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/status") as f:
        rss = int(f.read().split("VmRSS:")[1].split()[0])
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK"), rss


def serve_idle(db: Path, seconds: float) -> dict[str, Any]:
    """A real `threadbot serve` on the database while nothing is due: its
    RSS and the CPU it uses, read from /proc."""
    from ..fakes import ServerProcess, free_port  # not in the measured process

    env = {
        "THREADBOT_DB": str(db),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # never called: nothing is due
        "OPENAI_API_KEY": "k",
        "THREADBOT_MODEL": "idle",
        "THREADBOT_SMTP": f"127.0.0.1:{free_port()}",  # not the default port, maybe taken
    }
    server = ServerProcess(env).start()
    try:
        time.sleep(2)  # past start-up
        cpu0, _ = _proc(server.proc.pid)
        time.sleep(seconds)
        cpu1, rss = _proc(server.proc.pid)
    finally:
        server.stop()
    return {
        "serve_rss_mb": round(rss / 1024, 1),
        "serve_cpu_s_per_minute_idle": round((cpu1 - cpu0) / seconds * 60, 3),
        "serve_seconds": seconds,
    }


# -- what fired, and when ----------------------------------------------------------


def lateness(db: Path, window_end: float) -> dict[str, Any]:
    """Each timer due by `window_end`: did it fire once, and how late. Any
    timer that fired though it was not due yet is counted too."""
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT thread_id, body FROM events WHERE type IN ('tool_call', 'approval', 'reminder') "
        "ORDER BY thread_id, seq"
    ).fetchall()
    conn.close()
    calls: dict[str, ToolCall] = {}
    fired: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for thread_id, body in rows:
        e = load_event(body)
        if isinstance(e, ToolCall):
            calls[thread_id] = e
        elif isinstance(e, Approval) and e.source == DEADLINE:
            fired[(thread_id, "deadline")].append(e.ts.timestamp())
        elif isinstance(e, Reminder):
            fired[(thread_id, "remind")].append(e.ts.timestamp())
    out: dict[str, Any] = {}
    for kind in ("remind", "deadline"):
        late: list[float] = []
        due = missed = twice = early = 0
        for thread_id, c in calls.items():
            if c.timers is None:
                continue
            span = c.timers.remind_after if kind == "remind" else c.timers.deadline
            assert span is not None
            at = c.ts.timestamp() + span
            times = fired.get((thread_id, kind), [])
            if at <= window_end:
                due += 1
                missed += not times
                twice += len(times) > 1
                late.extend(t - at for t in times[:1])
            early += sum(t < at for t in times)
        out[kind] = {
            "due_in_window": due,
            "fired": len(late),
            "missed": missed,
            "fired_twice": twice,
            "fired_early": early,
            "fired_not_due": sum(
                1
                for (thread_id, k), times in fired.items()
                if k == kind and calls[thread_id].timers is not None
                for t in times
                if t > window_end
            ),
        }
        if late:
            out[kind] |= {
                "late_p50_ms": round(_pct(late, 0.5) * 1e3, 2),
                "late_p99_ms": round(_pct(late, 0.99) * 1e3, 2),
                "late_max_ms": round(max(late) * 1e3, 2),
            }
    return out


def watcher_plans(db: Path) -> list[str]:
    """How SQLite runs the timer watcher's two queries."""
    conn = sqlite3.connect(db)
    plans = [
        " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", [time.time()]))
        for sql in (
            "SELECT id FROM threads WHERE due_at <= ? ORDER BY due_at LIMIT 1000",
            "SELECT min(due_at) FROM threads WHERE due_at > ?",
        )
    ]
    conn.close()
    return plans


# -- the whole run -------------------------------------------------------------------


def run(
    n: int, due: int, window: float, work: Path, *, baseline: bool = True, serve: float = 0
) -> dict[str, Any]:
    report: dict[str, Any] = {"threads": n, "due_in_window": due, "window_s": window}
    for name, with_timers in (("timers", True), ("baseline", False)):
        if name == "baseline" and not baseline:
            continue
        db = work / f"{name}.db"
        # Building and opening take a few seconds; the window starts after.
        start = time.time() + 4 + n / 2000
        build(db, work, n, due if with_timers else 0, start, window, timers=with_timers)
        report[name] = idle = _measure(db, start, window)
        report[name]["db_bytes"] = db.stat().st_size
        if with_timers:
            report["fired"] = lateness(db, start + window)
            report["watcher_query_plans"] = watcher_plans(db)
        if serve:
            idle |= serve_idle(db, serve)
        print(name, json.dumps(idle), file=sys.stderr, flush=True)
    return report


def _table(report: dict[str, Any]) -> str:
    rows = [
        ("RSS at the end of the window", "rss_mb_at_end", "MB"),
        ("RSS, most during the window", "rss_mb_max", "MB"),
        ("CPU while idle", "cpu_s_per_minute_idle", "s/min"),
        ("asyncio tasks while idle (max)", "tasks_idle_max", ""),
        ("asyncio tasks while timers fire (max)", "tasks_while_firing_max", ""),
        ("SQL statements while idle", "sql_per_minute_idle", "/min"),
        ("  of them the timer watcher's", "watcher_sql_per_minute_idle", "/min"),
        ("`threadbot serve` afterwards: RSS", "serve_rss_mb", "MB"),
        ("`threadbot serve` afterwards: CPU idle", "serve_cpu_s_per_minute_idle", "s/min"),
    ]
    kinds = [k for k in ("timers", "baseline") if k in report]
    width = max(len(label) for label, _, _ in rows) + 1
    title = f"{report['threads']:,} paused threads"
    head = f"{title:<{width}}| " + " | ".join(
        f"{'with timers' if k == 'timers' else 'no timers':>12}" for k in kinds
    )
    lines = [head, "-" * len(head)]
    for label, key, unit in rows:
        cells = []
        for k in kinds:
            v = report[k].get(key)
            cells.append(f"{'-' if v is None else f'{v} {unit}'.strip():>12}")
        lines.append(f"{label:<{width}}| " + " | ".join(cells))
    fired = report.get("fired", {})
    for kind, label in (("remind", "reminders"), ("deadline", "deadlines")):
        f = fired.get(kind)
        if f:
            lines.append(
                f"{label} due in the window: {f['due_in_window']}, fired {f['fired']} "
                f"(missed {f['missed']}, twice {f['fired_twice']}, early {f['fired_early']}); "
                f"late p50 {f.get('late_p50_ms', '-')} ms, p99 {f.get('late_p99_ms', '-')} ms, "
                f"max {f.get('late_max_ms', '-')} ms"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.timers", description=__doc__)
    p.add_argument("--threads", type=int, default=10_000)
    p.add_argument("--due", type=int, help="threads due in the window (default: 5%%)")
    p.add_argument("--window", type=float, default=120.0, help="seconds measured")
    p.add_argument("--no-baseline", action="store_true", help="skip the threads without timers")
    p.add_argument(
        "--serve-seconds",
        type=float,
        default=30.0,
        help="then a real `threadbot serve` on each database, idle, this long (0: skip)",
    )
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        print(json.dumps(asyncio.run(_serve_and_sample(args.serve, args.start, args.window))))
        return 0
    due = args.due if args.due is not None else max(1, args.threads // 20)
    with tempfile.TemporaryDirectory() as d:
        report = run(
            args.threads,
            due,
            args.window,
            Path(d),
            baseline=not args.no_baseline,
            serve=args.serve_seconds,
        )
    report["machine"] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
    }
    print(_table(report))
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
