"""Kill threadbot again and again while it works, then count what went wrong.

Runs `threadbot serve` as a subprocess against a local fake model (a
stateless script, so a restarted server gets the same replies) and a local
SMTP relay; drives many threads through a question, a non-idempotent tool, an
approval, a deferred result and a read-only tool, over HTTP and email; and
SIGKILLs the server at random moments and at named points (as a tool starts,
after its side effect, inside an append between the rows and the commit, and
while a mail or a Slack post is being delivered), restarting it each time.
A third of the threads start over HTTP, a third by email, a third in Slack
(signed events to /slack/events, a local fake of the Slack Web API).

With `--postgres` the store is a throwaway PostgreSQL database (tests/pg.py;
`--postgres-url` names a server to make it on instead), and `--replicas N`
runs N servers on it, each with its own HTTP and SMTP ports; requests, mails
and Slack events go to any replica that is up, and Slack's fake Web API is
shared. Each kill picks a replica at random; random kills spare the last one
up (someone must take over), and a dead replica stays down a random 0 to
`--down` seconds before its restart. A process that dies while it delivers is
the one holding the thread's lease. A replica is killed less often than a
lone server (it stays down a while, and the last one up is spared), so the
threads are launched over the run, thread i once i/threads of the kills are
made: launched at once, they would all be done after the first few kills,
and the rest would meet idle servers (no tool running, nothing to deliver,
no named point reached). The report then also gives the takeover
time: for each thread a dead process left with work, the time until a runner
of another replica appended to it, or, counted apart, until the restarted
replica did first.

Most threads of each channel that delivers reminders and escalations (HTTP
always: its threads' notices go to the people the other channels reach) ship
with `ship_soon` instead: its approval is reminded after 1 s, escalated to a
Slack user and an address after 2 s and rejected at 5 s. The harness leaves
some of those to the deadline, approves some between the reminder and the
deadline, and races the deadline with others (an approval sent within
0.15 s of it, on a thread of its own).

    python -m tests.chaos [--kills 200] [--threads 40] [--seed 1] [--json FILE]
    python -m tests.chaos --postgres --replicas 2 [--down 4] ...

It prints the figures and exits 1 if any count of violations is not 0.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import random
import re
import smtplib
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from .. import pg
from ..fakes import REPO, FakeOpenAI, ServerProcess, calls, stop_strays, text
from ..mail_fake import CaptureRelay
from ..slack_fake import BOT_USER, SECRET, FakeSlack, SlackSender
from .replicas import Death, Replica, SharedDatabase, takeover

STEPS = ["request_human_input", "charge", "ship", "start_report", "lookup"]
POINTS = ["", "tool_started:0.5", "after_side_effect:0.5", "inside_append:0.04", "deliver"]
CHANNELS = ("email", "slack", "http")
"""The channel order i starts on: CHANNELS[i % 3]."""
PLANS = ("plain", "deadline", "race", "early", "race")
"""What the harness does with a timed thread's approval: `plain` ships with
`ship` (approved at once); the others with `ship_soon`: left to the deadline,
raced against it, or approved after the reminder and before the deadline."""


def follow_up_channels() -> set[str]:
    """The channels whose threads get timers: those that deliver reminders
    and escalations, which are those that say whom they reach (issue #15's
    contract for channels), and HTTP, which delivers nothing itself."""
    from channels.email.channel import EmailChannel
    from channels.slack.channel import SlackChannel

    return {"http"} | {
        name
        for name, cls in (("slack", SlackChannel), ("email", EmailChannel))
        if hasattr(cls, "reaches")
    }


def plan_of(order: int, timed: set[str]) -> str:
    return PLANS[(order // 3) % len(PLANS)] if CHANNELS[order % 3] in timed else "plain"


def make_brain(timed: set[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def brain(body: dict[str, Any]) -> dict[str, Any]:
        """The model: the next step is the first one the conversation has not made."""
        messages = body["messages"]
        first = next(m["content"] for m in messages if m["role"] == "user")
        order = int(re.findall(r"\d+", first)[-1])
        made = {c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()}
        ship = "ship" if plan_of(order, timed) == "plain" else "ship_soon"
        for step in STEPS:
            step = ship if step == "ship" else step
            if step not in made:
                all_args: dict[str, dict[str, Any]] = {
                    "request_human_input": {"question": f"Go ahead with order {order}?"},
                    "charge": {"amount": order},
                    ship: {"order": order},
                    "start_report": {"name": f"r{order}"},
                    "lookup": {"key": f"k{order}"},
                }
                return calls((step, all_args[step]))
        return text(f"Order {order} is complete.")

    return brain


class Harness:
    def __init__(
        self,
        args: argparse.Namespace,
        work: Path,
        model: FakeOpenAI,
        relay: CaptureRelay,
        slack: FakeSlack,
        shared: SharedDatabase | None = None,
    ) -> None:
        self.args = args
        self.model = model
        self.relay = relay
        self.slack = slack
        slack.on_post = self.on_slack_post
        # The relay keeps each mail, then the harness may kill the sender.
        self.relay_handle = relay.handle_DATA
        relay.handle_DATA = self.on_mail  # type: ignore[method-assign]
        self.killing = False
        self.stopping = False
        self.rng = random.Random(args.seed)
        self.spread = random.Random(args.seed + 1)
        """Which replica a request goes to."""
        self.work = work
        self.shared = shared
        self.db = shared.url if shared is not None else str(work / "threadbot.db")
        self.ledger = work / "ledger.txt"
        self.ledger.touch()
        self.kills = collections.Counter[str]()
        self.kills_by_replica = collections.Counter[int]()
        self.kills_with_work_left = 0
        self.unfinished = True
        """Whether some thread is not launched or not done yet."""
        self.paced = args.replicas > 1
        """Threads launched over the run rather than at once: see the docstring."""
        self.deaths: list[Death] = []
        self.acknowledged: list[tuple[str, str]] = []  # (thread, event key)
        self.replicas = [Replica(i) for i in range(args.replicas)]
        self.down = args.down if args.replicas > 1 else 0.0
        self.lock = threading.Lock()
        self.timed = follow_up_channels()
        self.plans: dict[str, str] = {}
        """Thread id → its plan (see PLANS)."""
        self.late: set[str] = set()
        """Calls whose approval is sent later, on a thread of its own."""
        self.races = collections.Counter[str]()

    # -- the servers ------------------------------------------------------------

    def env(self, replica: Replica, point: str) -> dict[str, str]:
        env = {
            "THREADBOT_DB": self.db,
            "OPENAI_BASE_URL": self.model.base_url,
            "OPENAI_API_KEY": "test",
            "THREADBOT_MODEL": "fake",
            "THREADBOT_TOOLS": str(REPO / "tests" / "chaos" / "tools.py"),
            "THREADBOT_TEST_LEDGER": str(self.ledger),
            "THREADBOT_CHAOS": "" if point == "deliver" else point,
            "THREADBOT_SMTP": f"127.0.0.1:{replica.smtp_port}",
            "THREADBOT_EMAIL": "bot@example.com",
            "THREADBOT_SMTP_RELAY": f"127.0.0.1:{self.relay.port}",
            "THREADBOT_SECRET": "chaos",
            "SLACK_BOT_TOKEN": "xoxb-chaos",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": self.slack.api_url,
        }
        if self.shared is not None:
            env["PGAPPNAME"] = replica.app_name  # see replicas.SharedDatabase
        return env

    def count_kill(self, replica: Replica, why: str) -> None:
        with self.lock:
            self.kills[why] += 1
            self.kills_by_replica[replica.index] += 1
            self.kills_with_work_left += self.unfinished

    def start(self, replica: Replica, point: str) -> None:
        while True:
            with replica.lock:
                replica.generation += 1
                replica.point = point
                replica.killed_by_us = False
                server = ServerProcess(self.env(replica, point), port=replica.port)
                try:
                    replica.server = server.start(timeout=30)
                    replica.started_at = time.monotonic()
                    replica.down_since = None
                    break
                except RuntimeError:
                    if server.proc is None or server.proc.returncode != -9:
                        raise
            # It died at its named point while resuming, before it answered.
            self.died(replica.index, replica.generation, server.proc.pid)
            name = point.partition(":")[0].replace("_", " ")
            self.count_kill(replica, f"at a named point: {name}")
            point = self.rng.choice(POINTS) if self.killing else ""
        if self.shared is not None:
            threading.Thread(
                target=self.watch, args=(replica, server, replica.generation), daemon=True
            ).start()

    def watch(self, replica: Replica, server: ServerProcess, generation: int) -> None:
        """Note the moment the process dies, and what it left."""
        server.proc.wait()
        if not self.stopping:
            self.died(replica.index, generation, server.proc.pid)

    def died(self, index: int, generation: int, pid: int) -> None:
        if self.shared is None:
            return
        at = time.time()
        left = self.shared.left_by(pid)
        with self.lock:
            self.deaths.append(Death(index, generation, at, left))

    def kill(self, replica: Replica, why: str) -> None:
        with replica.lock:
            server = replica.server
            if server is None or server.proc.poll() is not None:
                return
            server.proc.kill()
            replica.killed_by_us = True
        self.count_kill(replica, why)

    def ensure_running(self, *, now: bool = False) -> None:
        """Restart each replica that died, once its time down is over (at
        once with `now`, or with a single replica)."""
        for replica in self.replicas:
            server = replica.server
            assert server is not None
            if server.proc.poll() is None:
                continue
            if replica.down_since is None:
                server.proc.wait()
                if not replica.killed_by_us:
                    if server.proc.returncode != -9:
                        raise RuntimeError(f"the server exited by itself: {server.output()}")
                    point = replica.point.partition(":")[0].replace("_", " ")
                    self.count_kill(replica, f"at a named point: {point}")
                server.close()
                replica.down_since = time.monotonic()
                replica.restart_at = replica.down_since + (
                    self.rng.uniform(0, self.down) if self.down else 0.0
                )
            if now or time.monotonic() >= replica.restart_at:
                self.start(replica, self.rng.choice(POINTS) if self.killing else "")

    def pick(self) -> Replica | None:
        """A replica that is up, for the next request."""
        up = [r for r in self.replicas if r.up()]
        if len(self.replicas) == 1:
            return up[0] if up else None
        return self.spread.choice(up) if up else None

    def stop_all(self) -> None:
        self.stopping = True
        for replica in self.replicas:
            if replica.server is not None:
                replica.server.stop()

    # -- deliveries: the sender dies while it delivers, sometimes ----------------

    def sender(self, thread_id: str | None) -> Replica | None:
        """The replica delivering for the thread: the one whose process holds
        its lease (a runner delivers only under the thread's lease)."""
        if len(self.replicas) == 1:
            return self.replicas[0]
        if self.shared is None or thread_id is None:
            return None
        pid = self.shared.lease_pid(thread_id)
        return next((r for r in self.replicas if pid is not None and r.runs(pid)), None)

    def maybe_kill_sender(self, thread_id: str | None, why: str) -> None:
        if not self.killing:
            return
        replica = self.sender(thread_id)
        if replica is not None and replica.point == "deliver" and self.rng.random() < 0.5:
            self.kill(replica, why)

    async def on_mail(self, server: Any, session: Any, envelope: Any) -> str:
        result = await self.relay_handle(server, session, envelope)
        found = re.search(rb"Message-ID: <tb\.([0-9a-f]+)\.", envelope.content, re.IGNORECASE)
        thread_id = found.group(1).decode() if found else None
        self.maybe_kill_sender(thread_id, "while delivering a mail")
        return result

    def on_slack_post(self, args: dict[str, Any]) -> None:
        payload = (args.get("metadata") or {}).get("event_payload") or {}
        thread_id = payload.get("thread")
        self.maybe_kill_sender(
            thread_id if isinstance(thread_id, str) else None, "while delivering a Slack post"
        )

    # -- driving ----------------------------------------------------------------

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        replica = self.pick()
        if replica is None:
            return None
        try:
            return httpx.request(method, f"{replica.url}{path}", timeout=5, **kw)
        except httpx.HTTPError:
            return None  # the server died under us: the caller tries again

    def launch(self, i: int) -> str | None:
        if i % 3 == 0:  # a third of the threads come by email
            msg = EmailMessage()
            msg["From"], msg["To"] = f"user{i}@example.com", "bot@example.com"
            msg["Subject"], msg["Message-ID"] = f"order {i}", f"<order{i}@client>"
            msg.set_content(f"please process order {i}")
            replica = self.pick()
            if replica is None:
                return None
            try:
                with smtplib.SMTP("127.0.0.1", replica.smtp_port, timeout=5) as smtp:
                    smtp.send_message(msg)
            except (OSError, smtplib.SMTPException):
                return None
            return f"email:{i}"
        if i % 3 == 1:  # and a third in Slack
            event = {
                "type": "app_mention",
                "user": "U1",
                "channel": f"C{i}",
                "ts": f"{1000 + i}.000100",
                "text": f"<@{BOT_USER}> process order {i}",
            }
            replica = self.pick()
            if replica is None:
                return None
            try:
                sent = SlackSender(replica.url).event(event, event_id=f"Ev{i}")
            except httpx.HTTPError:
                return None
            return f"slack:{i}" if sent.status_code == 200 else None
        r = self.call(
            "POST",
            "/threads",
            json={"text": f"process order {i}"},
            headers={"Idempotency-Key": f"launch-{i}"},
        )
        return r.json()["id"] if r is not None and r.status_code == 201 else None

    def act(self, thread_id: str) -> str | None:
        r = self.call("GET", f"/threads/{thread_id}")
        if r is None or r.status_code != 200:
            return None
        body = r.json()
        pending = body["pending"]
        if body["status"] in ("done", "failed") or pending is None:
            return str(body["status"])
        call_id = pending["call_id"]
        plan = self.plans.get(thread_id, "plain")
        if pending["kind"] == "approval" and pending.get("tool") == "ship_soon":
            if plan != "deadline" and call_id not in self.late and "deadline" in pending:
                self.late.add(call_id)
                deadline = datetime.fromisoformat(pending["deadline"]).timestamp()
                if plan == "race":
                    at = deadline + self.rng.uniform(-0.15, 0.15)
                else:  # after the escalation (2 s), before the deadline (5 s)
                    at = deadline - self.rng.uniform(0.5, 2.8)
                timer = threading.Timer(
                    max(0.0, at - time.time()), self.approve_late, (thread_id, call_id, plan)
                )
                timer.daemon = True
                timer.start()
            return str(body["status"])
        route, payload = {
            "question": ("responses", {"text": "yes", "call_id": call_id}),
            "approval": ("approvals", {"approved": True, "call_id": call_id}),
            "result": ("results", {"call_id": call_id, "output": {"rows": 3}}),
        }[pending["kind"]]
        key = f"{call_id}-{route}"
        r = self.call(
            "POST", f"/threads/{thread_id}/{route}", json=payload, headers={"Idempotency-Key": key}
        )
        if r is not None and r.status_code == 202:
            self.acknowledged.append((thread_id, f"{thread_id}:{route}:{key}"))
        return str(body["status"])

    def approve_late(self, thread_id: str, call_id: str, plan: str) -> None:
        """Approve a timed call, racing its deadline or not; a server that is
        down is tried again until it answers."""
        key = f"{call_id}-approvals"
        payload = {"approved": True, "call_id": call_id}
        for _ in range(300):
            r = self.call(
                "POST",
                f"/threads/{thread_id}/approvals",
                json=payload,
                headers={"Idempotency-Key": key},
            )
            if r is not None:
                break
            time.sleep(0.1)
        with self.lock:
            if r is not None and r.status_code == 202:
                self.acknowledged.append((thread_id, f"{thread_id}:approvals:{key}"))
                self.races[f"{plan}: approved by the person"] += 1
            elif r is not None and r.status_code == 409:
                self.races[f"{plan}: the deadline came first"] += 1
            else:
                self.races[f"{plan}: {r.status_code if r is not None else 'no answer'}"] += 1

    def killer(self) -> None:
        while self.killing:
            time.sleep(self.rng.uniform(0.2, 1.5))
            if len(self.replicas) == 1:
                replica = self.replicas[0]
            else:
                up = [r for r in self.replicas if r.up()]
                if len(up) < 2:
                    continue  # the last one up stays: someone must take over
                replica = self.rng.choice(up)
            # A server set to die at a named point gets a few seconds to get there.
            if replica.point and time.monotonic() - replica.started_at < 4:
                continue
            if self.killing:
                self.kill(replica, "at a random moment")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.killing = True
        for replica in self.replicas:
            self.start(replica, "")
        ids: dict[int, str] = {}
        threads, kills = self.args.threads, self.args.kills
        pending = set(range(threads))
        done: set[str] = set()
        threading.Thread(target=self.killer, daemon=True).start()
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            if self.kills.total() >= self.args.kills and self.killing:
                self.killing = False  # enough: let everything finish
                deadline = min(deadline, time.monotonic() + self.args.settle)
            self.unfinished = bool(pending) or len(done) < threads
            self.ensure_running()
            for i in sorted(pending):
                if self.paced and self.killing and self.kills.total() * threads < i * kills:
                    break  # launched later in the run
                launched = self.launch(i)
                if launched is not None:
                    pending.discard(i)
                    if not launched.startswith(("email:", "slack:")):
                        ids[i] = launched
            self.resolve_channel_threads(ids)
            for i, thread_id in ids.items():
                self.plans[thread_id] = plan_of(i, self.timed)
            for thread_id in ids.values():
                if thread_id not in done and self.act(thread_id) in ("done", "failed"):
                    done.add(thread_id)
            if not self.killing and not pending and len(done) == threads:
                break
            time.sleep(0.02)
        self.killing = False
        self.ensure_running(now=True)
        report = self.check(ids, time.monotonic() - t0)
        self.stop_all()
        return report

    def resolve_channel_threads(self, ids: dict[int, str]) -> None:
        """Threads started by mail or in Slack, found by their titles."""
        missing = [i for i in range(self.args.threads) if i % 3 != 2 and i not in ids]
        if not missing:
            return
        r = self.call("GET", "/threads?limit=1000")
        if r is None or r.status_code != 200:
            return
        for row in r.json():
            found = re.findall(r"order (\d+)$", row["title"])
            if found and int(found[0]) in missing:
                ids[int(found[0])] = row["id"]

    # -- the verdict ---------------------------------------------------------------

    def read_thread(self, thread_id: str) -> dict[str, Any]:
        """The thread as the server shows it; the server may still die at its
        named point (it is restarted) or answer slowly on a busy machine."""
        deadline = time.monotonic() + 60
        while True:
            self.ensure_running(now=True)
            r = self.call("GET", f"/threads/{thread_id}")
            if r is not None and r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
            if r is not None and r.status_code != 200:
                raise AssertionError(f"GET /threads/{thread_id}: {r.status_code} {r.text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"GET /threads/{thread_id}: no answer for a minute")
            time.sleep(0.2)

    def check(self, ids: dict[int, str], seconds: float) -> dict[str, Any]:
        threads = {}
        for thread_id in ids.values():
            threads[thread_id] = self.read_thread(thread_id)
        now = time.time()
        done = sum(t["status"] == "done" for t in threads.values())
        keys = {e.get("key") for t in threads.values() for e in t["events"] if e.get("key")}
        # Stored as "http:<who sent it>:<thread>:<route>:<Idempotency-Key>".
        missing = [
            a for _, a in self.acknowledged if not any(str(k).endswith(f":{a}") for k in keys)
        ]
        lines = self.ledger.read_text().splitlines()
        ledger = collections.Counter(line.split()[1] for line in lines)
        twice = {call: n for call, n in ledger.items() if n > 1}
        duplicates = nudged_twice = outcomes_twice = overdue = 0
        timers = collections.Counter[str]()
        follow_ups: set[tuple[str, int]] = set()  # (thread, seq) of reminders and escalations
        delivered = collections.Counter[tuple[str, int, str]]()  # (thread, seq, channel)
        approvals = collections.defaultdict[str, set[tuple[bool, str]]](set)  # call → decisions
        for thread_id, t in threads.items():
            events = t["events"]
            if [e["seq"] for e in events] != list(range(len(events))):
                duplicates += 1
            per_call = collections.Counter(
                (e["type"], e.get("call_id"))
                for e in events
                if e["type"]
                in ("tool_call", "tool_started", "tool_result", "human_response", "approval")
            )
            duplicates += sum(n - 1 for n in per_call.values() if n > 1)
            event_keys = [e["key"] for e in events if e.get("key")]
            duplicates += len(event_keys) - len(set(event_keys))
            # Timers: each reminder and escalation written once a call, one
            # outcome a call (a person's or the deadline's), none left overdue.
            nudges = collections.Counter(
                (e["type"], e["call_id"]) for e in events if e["type"] in ("reminder", "escalated")
            )
            nudged_twice += sum(n - 1 for n in nudges.values() if n > 1)
            timers.update(kind for kind, _ in nudges.elements())
            outcomes = collections.Counter(
                e["call_id"] for e in events if e["type"] in ("approval", "human_response")
            )
            outcomes_twice += sum(1 for n in outcomes.values() if n > 1)
            for e in events:
                if e["type"] == "approval":
                    approvals[e["call_id"]].add((e["approved"], who(e["source"])))
                if e["type"] == "approval" and e["source"].get("auth") == "deadline":
                    timers["settled by the deadline"] += 1
                elif e["type"] == "approval" and self.plans.get(thread_id, "plain") != "plain":
                    timers["settled by a person"] += 1
                if e["type"] in ("reminder", "escalated"):
                    follow_ups.add((thread_id, e["seq"]))
                if e["type"] == "delivered":
                    delivered[(thread_id, e["of_seq"], e["channel"])] += 1
            for p in t.get("pending_calls") or ([t["pending"]] if t.get("pending") else []):
                if "deadline" in p and datetime.fromisoformat(p["deadline"]).timestamp() < now:
                    overdue += 1
        # Notifications: one per pause and recipient (per delivered item), by Message-ID.
        by_item: dict[tuple[str, str, str], set[str]] = collections.defaultdict(set)
        sends = collections.Counter[str]()
        for c in self.relay.messages:
            mid = str(c.message["Message-ID"])
            found = re.match(r"<tb\.([0-9a-f]+)\.(\d+)\.[0-9a-f]+@", mid)
            if found:
                by_item[(found.group(1), found.group(2), " ".join(c.rcpt_tos))].add(mid)
                sends[mid] += 1
        mailed_twice = {item for item, mids in by_item.items() if len(mids) > 1}
        # Each shipment ran on an approval of its own call, and the tool was
        # told who gave it (the ledger line names them).
        unapproved = sum(
            1
            for kind, call_id, by in (line.split(" ", 2) for line in lines if line.count(" ") >= 2)
            if kind == "ship" and (True, by) not in approvals.get(call_id, ())
        )
        # Slack: one post per conversation and part (a direct message to each
        # person reached carries the same payload as the others).
        posts = collections.Counter(
            (p["channel"], json.dumps(p["metadata"]["event_payload"], sort_keys=True))
            for p in self.slack.called("chat.postMessage")
            if p.get("metadata")
        )
        posted_twice = {post: n - 1 for post, n in posts.items() if n > 1}
        recorded_twice = {item: n - 1 for item, n in delivered.items() if n > 1}

        def follow_up(thread_id: str, seq: int) -> bool:
            return (thread_id, seq) in follow_ups

        def payload_of(post: tuple[str, str]) -> tuple[str, int]:
            p = json.loads(post[1])
            return str(p.get("thread")), int(p.get("seq", -1))

        follow_ups_twice = (
            sum(1 for th, seq, _ in mailed_twice if follow_up(th, int(seq)))
            + sum(n for post, n in posted_twice.items() if follow_up(*payload_of(post)))
            + sum(n for (th, seq, _), n in recorded_twice.items() if follow_up(th, seq))
        )
        for thread_id, t in threads.items():
            plan = self.plans.get(thread_id, "plain")
            for e in t["events"]:
                seen = e.get("call_id") in self.late
                if plan != "deadline" and e.get("name") == "ship_soon" and not seen:
                    self.races[f"{plan}: never seen waiting (the server was down)"] += 1
        follow_up_deliveries = collections.Counter(
            ch for (th, seq, ch) in delivered if follow_up(th, seq)
        )
        return {
            "kills": dict(self.kills),
            "kills_total": self.kills.total(),
            "kills_while_threads_unfinished": self.kills_with_work_left,
            "threads": len(threads),
            "threads_done": done,
            "acknowledged_responses": len(self.acknowledged),
            "violations": {
                "acknowledged_responses_missing": len(missing),
                "non_idempotent_tools_run_twice": len(twice),
                "duplicate_events": duplicates,
                "notifications_more_than_once_per_pause": len(mailed_twice)
                + sum(posted_twice.values())
                + sum(recorded_twice.values()),
                "reminders_or_escalations_written_twice": nudged_twice,
                "reminders_or_escalations_delivered_twice": follow_ups_twice,
                "calls_with_more_than_one_outcome": outcomes_twice,
                "deadlines_overdue_never_fired": overdue,
                "tools_run_without_that_approval_or_approver": unapproved,
            },
            "timed_channels": sorted(self.timed),
            "plans": dict(collections.Counter(self.plans.values())),
            "timers": dict(timers),
            "late_approvals": dict(self.races),
            "reminder_and_escalation_deliveries": dict(follow_up_deliveries),
            "mail_resent_with_the_same_message_id": sum(n - 1 for n in sends.values() if n > 1),
            "slack_posts": sum(posts.values()),
            "mails": sum(sends.values()),
            "tool_side_effects": sum(ledger.values()),
            "seconds": round(seconds, 1),
            **self.replica_figures(),
        }

    def replica_figures(self) -> dict[str, Any]:
        """With PostgreSQL: the replicas, the kills each took, and the takeover times."""
        if self.shared is None:
            return {}
        with self.lock:
            deaths = list(self.deaths)
        return {
            "store": "postgresql",
            "replicas": len(self.replicas),
            "kills_by_replica": {str(i): n for i, n in sorted(self.kills_by_replica.items())},
            "restarts_by_replica": {str(r.index): r.generation - 1 for r in self.replicas},
            "takeover": takeover(deaths, self.shared.appends()),
        }


def who(source: dict[str, Any]) -> str:
    """What the tool is told of whoever approved it (bot.events.Source.who)."""
    return str(source.get("name") or source.get("user") or source.get("channel"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=200)
    p.add_argument("--threads", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument(
        "--settle",
        type=float,
        default=180,
        help="seconds to let threads finish after the last kill",
    )
    p.add_argument("--json", help="also write the report here")
    p.add_argument(
        "--postgres",
        action="store_true",
        help="run on a throwaway PostgreSQL server (tests/pg.py) instead of a SQLite file",
    )
    p.add_argument(
        "--postgres-url",
        help="run on a fresh database made (and dropped after) on this PostgreSQL server",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="threadbot serve processes on the one database (several need PostgreSQL)",
    )
    p.add_argument(
        "--down",
        type=float,
        default=4.0,
        help="with several replicas, a dead one stays down a random 0 to this many "
        "seconds before its restart, so that the others take over its threads",
    )
    args = p.parse_args(argv)
    postgres = args.postgres or args.postgres_url is not None
    if args.replicas < 1:
        p.error("--replicas must be 1 or more")
    if args.replicas > 1 and not postgres:
        p.error("several replicas share a PostgreSQL database: add --postgres or --postgres-url")
    if args.postgres and args.postgres_url is None and (why := pg.available()) is not None:
        p.error(f"--postgres: cannot start a PostgreSQL server here: {why}")
    atexit.register(stop_strays)
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(tempfile.TemporaryDirectory())
        shared = stack.enter_context(shared_database(args.postgres_url)) if postgres else None
        model = stack.enter_context(FakeOpenAI().serve())
        relay = stack.enter_context(CaptureRelay().serve())
        slack = stack.enter_context(FakeSlack().serve())
        model.add(*[make_brain(follow_up_channels())] * 100_000)
        harness = Harness(args, Path(d), model, relay, slack, shared)
        try:
            report = harness.run()
        finally:
            harness.stop_all()
    print(json.dumps(report, indent=2))
    v = report["violations"]
    print(
        f"\n{report['kills_total']} kills, "
        f"{report['threads_done']}/{report['threads']} threads done, "
        f"{report['acknowledged_responses']} acknowledged responses, {report['seconds']} s; "
        + ", ".join(f"{k.replace('_', ' ')}: {n}" for k, n in v.items())
    )
    if "takeover" in report:
        t = report["takeover"]
        print(
            f"{report['replicas']} replicas on PostgreSQL; kills by replica "
            f"{report['kills_by_replica']}; takeover after {t['deaths']} deaths "
            f"({t['deaths_leaving_threads']} leaving threads with work): "
            f"by another replica {t['taken_over_by_another_replica']}, "
            f"first by the restarted one {t['resumed_first_by_the_restarted_replica']}, "
            f"no runner append after: {t['no_runner_append_after']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(v.values()) or report["threads_done"] < report["threads"] else 0


@contextlib.contextmanager
def shared_database(server_url: str | None) -> Iterator[SharedDatabase]:
    """A fresh database on the given server, or on a throwaway one of our own."""
    with contextlib.ExitStack() as stack:
        server = (
            pg.Postgres(server_url)
            if server_url is not None
            else stack.enter_context(pg.PostgresServer())
        )
        name = f"threadbot_chaos_{uuid.uuid4().hex[:12]}"
        shared = SharedDatabase(server.create_database(name))
        stack.callback(server.drop_database, name)
        stack.callback(shared.close)
        shared.prepare()
        yield shared


if __name__ == "__main__":
    sys.exit(main())
