"""Many threads in one process.

- concurrency: N threads doing R question/answer round-trips each against a
  model that takes 100 ms; wall time against the ideal (R + 1) x 100 ms. Twice:
  with a fake model object in the process, and through the real `openai`
  client to a fake server in another process.
- paused threads: a store holding 100,000 threads waiting for a person;
  a fresh process opens it (RSS), lists the waiting ones (time).
- acks: while 100 threads keep running, how long `threadbot serve` takes to
  acknowledge a person's response (POST /threads/{id}/responses, and a
  signed Slack event replying in the thread), and the launches before them.

On PostgreSQL (`--scale --postgres` or `--postgres-url`), only the
concurrency, each time on a fresh database: SQLite in one process (for
reference, in the same run), PostgreSQL in one process, and PostgreSQL with
two replicas: two processes, each a ThreadBot as above (`replica`), running
half of the threads each on one database, timed from the first launch to the
last thread done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bot import OpenAIModel, ThreadBot, Toolbox
from bot.context import Context
from bot.events import Source, ToolCall, UserMessage
from bot.log import ThreadLog
from bot.model import Model, ModelCall, ModelReply
from store import EventStore, open_store
from threadbot.process import tune_for_serving

from ..fakes import REPO, ServerProcess, free_port
from ..slack_fake import BOT_USER, SECRET, SlackSender
from .__main__ import _pct
from .databases import PostgresDatabases
from .model_server import QUESTION, ModelServer, child_process, model_server_process

ASK = "request_human_input"
ARGUMENTS = json.dumps({"question": QUESTION})


class SlowModel:
    """A fake model in the process: `delay` seconds a turn, asks until the
    context holds `rounds` tool results, then answers."""

    name = "in-process fake model"

    def __init__(self, delay: float, rounds: int) -> None:
        self.delay = delay
        self.rounds = rounds
        self.requests = 0

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        self.requests += 1
        await asyncio.sleep(self.delay)
        results = sum(p.startswith(b'{"role":"tool"') for p in context.parts)
        if results >= self.rounds:
            return ModelReply(text="done")
        return ModelReply(calls=(ModelCall(f"call_{uuid.uuid4().hex[:12]}", ASK, ARGUMENTS),))


async def _run_threads(bot: ThreadBot, numbers: range) -> None:
    """Launch a thread for each number; answer each question until it is done."""

    async def one(i: int) -> None:
        thread_id = await bot.launch(f"thread {i}")
        while True:
            await bot.settle(thread_id)
            state = bot.get(thread_id).state
            if state.status == "done":
                return
            assert state.pending is not None, state.status
            await bot.respond(thread_id, "yes", call_id=state.pending.call_id)

    await asyncio.gather(*(one(i) for i in numbers))


async def concurrency(
    n: int, rounds: int, delay: float, work: Path, *, via: str = "in-process", db: str = ""
) -> dict[str, Any]:
    """`via`: "in-process" (a fake model object) or "openai" (the real client
    to a fake server in another process). `db`: a PostgreSQL URL (default: a
    SQLite file in `work`)."""
    server: ModelServer | None = None
    model: Model
    if via == "openai":
        server = await ModelServer.start(delay=delay, rounds=rounds, report=False)
        model = OpenAIModel("slow", base_url=server.base_url)
    else:
        model = SlowModel(delay, rounds)
    try:
        store = open_store(db or work / f"concurrency-{via}.db")
        bot = ThreadBot(store, model, Toolbox(), max_turns=10**6)
        tune_for_serving()  # as `threadbot serve` does
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await _run_threads(bot, range(n))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await bot.close()
        store.close()
    finally:
        if server is not None:
            await server.stop()
    ideal = (rounds + 1) * delay
    return {
        "model": via,
        "threads": n,
        "round_trips_each": rounds,
        "model_latency_s": delay,
        "seconds": round(seconds, 3),
        "ideal_seconds": ideal,
        "ratio_to_ideal": round(seconds / ideal, 2),
        "cpu_seconds": round(cpu, 2),
    }


async def replica(
    db: str, numbers: range, rounds: int, delay: float, model_url: str | None
) -> dict[str, Any]:
    """One replica of `two_replicas`: ready once built (prints `ready`), it
    waits for a line on stdin, then runs its threads. Its clock is the
    machine's, shared with the other replica."""
    model: Model = (
        OpenAIModel("slow", base_url=model_url) if model_url else SlowModel(delay, rounds)
    )
    store = open_store(db)
    bot = ThreadBot(store, model, Toolbox(), max_turns=10**6)
    tune_for_serving()
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    start = time.perf_counter()
    await _run_threads(bot, numbers)
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    await bot.close()
    store.close()
    return {"start": start, "end": end, "cpu_seconds": cpu}


def two_replicas(n: int, rounds: int, delay: float, db: str, *, via: str) -> dict[str, Any]:
    """`n` threads split between two replicas (processes) on the PostgreSQL
    database at `db`; seconds from the first launch to the last thread done.
    `via` as for `concurrency`; through the `openai` client both replicas
    call one model server."""
    with contextlib.ExitStack() as stack:
        args = ["--db", db, "--rounds", str(rounds), "--delay", str(delay)]
        if via == "openai":
            model_args = ("--delay", str(delay), "--rounds", str(rounds))
            args += ["--model-url", stack.enter_context(model_server_process(*model_args))]
        halves = [range(0, n // 2), range(n // 2, n)]
        procs = []
        for numbers in halves:
            cmd = ["-m", "tests.bench.scale", *args, "--first", str(numbers.start)]
            proc = subprocess.Popen(
                [sys.executable, *cmd, "--count", str(len(numbers))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            stack.callback(proc.kill)
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "ready", f"a replica did not start: {line!r}"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"a replica exited {proc.returncode}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    store = open_store(db)
    done = len(store.thread_ids(status="done"))
    store.close()
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    ideal = (rounds + 1) * delay
    return {
        "model": via,
        "replicas": 2,
        "threads": n,
        "threads_done": done,
        "round_trips_each": rounds,
        "model_latency_s": delay,
        "seconds": round(seconds, 3),
        "ideal_seconds": ideal,
        "ratio_to_ideal": round(seconds / ideal, 2),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 2),
        "replica_seconds": [round(r["end"] - r["start"], 3) for r in results],
    }


def paused(n: int, work: Path) -> dict[str, Any]:
    db = work / "paused.db"
    store = EventStore(db, durable=False)  # building the fixture only
    log = ThreadLog(store, cache_events=0)
    t0 = time.perf_counter()
    with store.db.atomic():
        for i in range(n):
            log.create_sync(
                f"t{i:07d}",
                [
                    UserMessage(text=f"please deploy service {i}", source=Source(channel="http")),
                    ToolCall(
                        call_id=f"c{i}",
                        name="request_human_input",
                        arguments={"question": "Which version?"},
                    ),
                ],
            )
    built = time.perf_counter() - t0
    store.close()
    code = (
        "import resource, time, sys\n"
        "from bot import ThreadBot, ScriptedModel\n"
        "from store import EventStore\n"
        f"bot = ThreadBot(EventStore({str(db)!r}), ScriptedModel())\n"
        "rss = int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
        "t0 = time.perf_counter(); page = bot.threads(status='waiting_for_human', limit=100)\n"
        "t1 = time.perf_counter(); every = bot.threads(status='waiting_for_human', limit=10**9)\n"
        "t2 = time.perf_counter()\n"
        "print(rss, t1 - t0, t2 - t1, len(page), len(every))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rss_kb, page_s, all_s, page_n, all_n = out.stdout.split()
    empty = work / "empty.db"
    base = subprocess.run(
        [sys.executable, "-c", code.replace(str(db), str(empty))],
        capture_output=True,
        text=True,
        check=True,
    )
    empty_rss_kb = base.stdout.split()[0]
    return {
        "paused_threads": n,
        "build_seconds": round(built, 1),
        "db_bytes": db.stat().st_size,
        "rss_mb_after_open": round(int(rss_kb) / 1024, 1),
        "rss_mb_with_an_empty_store": round(int(empty_rss_kb) / 1024, 1),
        "list_first_100_waiting_ms": round(float(page_s) * 1e3, 2),
        "list_all_waiting_ms": round(float(all_s) * 1e3, 1),
        "listed": [int(page_n), int(all_n)],
    }


def slack_process() -> contextlib.AbstractContextManager[str]:
    """The fake Slack Web API in a process of its own, so that answering the
    bot's calls does not slow down the process that times the acks. Yields
    its API URL."""
    code = (
        "import time\n"
        "from tests.slack_fake import FakeSlack\n"
        "with FakeSlack().serve() as s:\n"
        "    print(s.api_url, flush=True)\n"
        "    time.sleep(10**9)\n"
    )
    return child_process("-c", code)


def _count(client: httpx.Client, status: str) -> int:
    r = client.get(f"/threads?status={status}&limit=1000")
    r.raise_for_status()
    return len(r.json())


def _wait_count(client: httpx.Client, status: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _count(client, status) != n:
        assert time.monotonic() < deadline, f"{status}: {_count(client, status)}, wanted {n}"
        time.sleep(0.1)


def _timed(samples: list[float], send: Callable[[], httpx.Response]) -> httpx.Response:
    t0 = time.perf_counter()
    r = send()
    samples.append(time.perf_counter() - t0)
    time.sleep(0.01)
    return r


def acks(running: int, samples: int, work: Path, *, tune: str = "on") -> dict[str, Any]:
    """How long `threadbot serve` takes to acknowledge a person's response,
    over HTTP and as a reply in a Slack thread, while `running` threads keep
    calling a 100 ms model and a tool. The answered threads (started for the
    purpose: they ask a question at once) then end at once, so the load stays
    what it was. The launches of those threads are timed too. `tune`: the
    server's THREADBOT_TUNE."""
    model_args = ["--tool", "lookup", "--arguments", '{"name": "x"}', "--delay", "0.1"]
    with (
        model_server_process(*model_args, "--ask-on", "ack-probe") as model_url,
        slack_process() as slack_url,
    ):
        (work / "ledger.txt").touch()
        env = {
            "THREADBOT_DB": str(work / "acks.db"),
            "OPENAI_BASE_URL": model_url,
            "OPENAI_API_KEY": "k",
            "THREADBOT_MODEL": "slow",
            "THREADBOT_TOOLS": str(Path(__file__).resolve().parents[1] / "ledger_tools.py"),
            "THREADBOT_TEST_LEDGER": str(work / "ledger.txt"),
            "THREADBOT_MAX_TURNS": "1000000",
            "THREADBOT_SMTP": f"127.0.0.1:{free_port()}",
            "SLACK_BOT_TOKEN": "xoxb",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack_url,
            "THREADBOT_TUNE": tune,
        }
        server = ServerProcess(env).start()
        timed: dict[str, list[float]] = {
            "http_launch": [],
            "http_response": [],
            "slack_mention": [],
            "slack_reply": [],
        }
        try:
            with httpx.Client(base_url=server.url) as client:
                for i in range(running):
                    client.post("/threads", json={"text": f"busy {i}"})
                time.sleep(1.0)
                n_running = _count(client, "running")
                probes = [
                    _timed(
                        timed["http_launch"],
                        partial(client.post, "/threads", json={"text": f"ack-probe {i}"}),
                    ).json()["id"]
                    for i in range(samples)
                ]
                _wait_count(client, "waiting_for_human", samples)
                for thread_id in probes:
                    r = _timed(
                        timed["http_response"],
                        partial(
                            client.post, f"/threads/{thread_id}/responses", json={"text": "yes"}
                        ),
                    )
                    assert r.status_code == 202, r.text
                _wait_count(client, "waiting_for_human", 0)

                sender = SlackSender(server.url)
                with httpx.Client() as slack:

                    def event(payload: dict[str, Any]) -> httpx.Response:
                        body, headers = sender.signed_event(payload)
                        return slack.post(sender.url, content=body, headers=headers)

                    mention = {"type": "app_mention", "user": "U1", "channel": "CACK"}
                    for i in range(samples):
                        root = f"{2000 + i}.000100"
                        text = f"<@{BOT_USER}> ack-probe {i}"
                        r = _timed(
                            timed["slack_mention"],
                            partial(event, {**mention, "ts": root, "text": text}),
                        )
                        assert r.status_code == 200
                    _wait_count(client, "waiting_for_human", samples)
                    reply = {"type": "message", "user": "U1", "channel": "CACK", "text": "yes"}
                    for i in range(samples):
                        p = {**reply, "ts": f"{5000 + i}.000100", "thread_ts": f"{2000 + i}.000100"}
                        r = _timed(timed["slack_reply"], partial(event, p))
                        assert r.status_code == 200
                    _wait_count(client, "waiting_for_human", 0)
        finally:
            server.stop()
    report: dict[str, Any] = {"tune": tune, "running_threads": n_running, "samples_each": samples}
    for name, values in timed.items():
        report[f"{name}_ack_p50_ms"] = round(statistics.median(values) * 1e3, 2)
        report[f"{name}_ack_p99_ms"] = round(_pct(values, 0.99) * 1e3, 2)
    return report


def run_acks(json_path: str | None, tune: str) -> int:
    """Only the acknowledgements under load."""
    with tempfile.TemporaryDirectory() as d:
        report = acks(100, 1000, Path(d), tune=tune)
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0


def run_scale(json_path: str | None, databases: PostgresDatabases | None = None) -> int:
    if databases is not None:
        return run_scale_postgres(json_path, databases)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for via in ("in-process", "openai"):
            report[f"concurrency_{via}"] = result = asyncio.run(
                concurrency(1000, 3, 0.1, work, via=via)
            )
            print("concurrency", result, flush=True)
        report["paused"] = paused(100_000, work)
        print("paused", report["paused"], flush=True)
        report["acks"] = acks(100, 1000, work)
        print("acks", report["acks"], flush=True)
    report["bench_process_max_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0


def run_scale_postgres(json_path: str | None, databases: PostgresDatabases) -> int:
    """1,000 threads x 3 round-trips: SQLite, PostgreSQL, PostgreSQL with two replicas."""
    report: dict[str, Any] = {"postgres": databases.version()}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for via in ("in-process", "openai"):
            runs = [
                ("sqlite", concurrency(1000, 3, 0.1, work, via=via)),
                ("postgres", concurrency(1000, 3, 0.1, work, via=via, db=databases.new("one"))),
            ]
            for name, run in runs:
                report[f"concurrency_{via}_{name}"] = result = asyncio.run(run)
                print("concurrency", name, result, flush=True)
            result = two_replicas(1000, 3, 0.1, databases.new("two"), via=via)
            report[f"concurrency_{via}_postgres_two_replicas"] = result
            print("concurrency postgres_two_replicas", result, flush=True)
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """A replica of `two_replicas` (run by it)."""
    p = argparse.ArgumentParser(prog="python -m tests.bench.scale")
    p.add_argument("--db", required=True, help="a PostgreSQL URL")
    p.add_argument("--first", type=int, required=True, help="the first thread's number")
    p.add_argument("--count", type=int, required=True, help="threads this replica runs")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--delay", type=float, required=True)
    p.add_argument("--model-url", help="the model server (default: a fake model in the process)")
    a = p.parse_args(argv)
    numbers = range(a.first, a.first + a.count)
    print(json.dumps(asyncio.run(replica(a.db, numbers, a.rounds, a.delay, a.model_url))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
