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

Most threads of each channel that delivers reminders and escalations (HTTP
always: its threads' notices go to the people the other channels reach) ship
with `ship_soon` instead: its approval is reminded after 1 s, escalated to a
Slack user and an address after 2 s and rejected at 5 s. The harness leaves
some of those to the deadline, approves some between the reminder and the
deadline, and races the deadline with others (an approval sent within
0.15 s of it, on a thread of its own).

    python -m tests.chaos [--kills 200] [--threads 40] [--seed 1] [--json FILE]

It prints the figures and exits 1 if any count of violations is not 0.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import random
import re
import smtplib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from ..fakes import REPO, FakeOpenAI, ServerProcess, calls, free_port, stop_strays, text
from ..mail_fake import CaptureRelay
from ..slack_fake import BOT_USER, SECRET, FakeSlack, SlackSender

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
                args: dict[str, Any] = {
                    "request_human_input": {"question": f"Go ahead with order {order}?"},
                    "charge": {"amount": order},
                    ship: {"order": order},
                    "start_report": {"name": f"r{order}"},
                    "lookup": {"key": f"k{order}"},
                }[step]
                return calls((step, args))
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
        self.point = ""
        self.killed_by_us = False
        self.started_at = 0.0
        self.rng = random.Random(args.seed)
        self.work = work
        self.ledger = work / "ledger.txt"
        self.ledger.touch()
        self.kills = collections.Counter[str]()
        self.acknowledged: list[tuple[str, str]] = []  # (thread, event key)
        self.server: ServerProcess | None = None
        self.port = free_port()
        self.smtp_port = free_port()
        self.lock = threading.Lock()
        self.deliver_kill = False
        self.timed = follow_up_channels()
        self.plans: dict[str, str] = {}
        """Thread id → its plan (see PLANS)."""
        self.late: set[str] = set()
        """Calls whose approval is sent later, on a thread of its own."""
        self.races = collections.Counter[str]()

    # -- the server -----------------------------------------------------------

    def env(self, point: str) -> dict[str, str]:
        return {
            "THREADBOT_DB": str(self.work / "threadbot.db"),
            "OPENAI_BASE_URL": self.model.base_url,
            "OPENAI_API_KEY": "test",
            "THREADBOT_MODEL": "fake",
            "THREADBOT_TOOLS": str(REPO / "tests" / "chaos" / "tools.py"),
            "THREADBOT_TEST_LEDGER": str(self.ledger),
            "THREADBOT_CHAOS": "" if point == "deliver" else point,
            "THREADBOT_SMTP": f"127.0.0.1:{self.smtp_port}",
            "THREADBOT_EMAIL": "bot@example.com",
            "THREADBOT_SMTP_RELAY": f"127.0.0.1:{self.relay.port}",
            "THREADBOT_SECRET": "chaos",
            "SLACK_BOT_TOKEN": "xoxb-chaos",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": self.slack.api_url,
        }

    def start(self, point: str) -> None:
        while True:
            with self.lock:
                self.point = point
                self.killed_by_us = False
                self.deliver_kill = point == "deliver"
                server = ServerProcess(self.env(point), port=self.port)
                try:
                    self.server = server.start(timeout=30)
                    self.started_at = time.monotonic()
                    return
                except RuntimeError:
                    if server.proc is None or server.proc.returncode != -9:
                        raise
            # It died at its named point while resuming, before it answered.
            name = point.partition(":")[0].replace("_", " ")
            self.kills[f"at a named point: {name}"] += 1
            point = self.rng.choice(POINTS) if self.killing else ""

    def kill(self, why: str) -> None:
        with self.lock:
            server = self.server
            if server is None or server.proc.poll() is not None:
                return
            server.proc.kill()
            self.killed_by_us = True
            self.kills[why] += 1

    def ensure_running(self) -> None:
        assert self.server is not None
        if self.server.proc.poll() is None:
            return
        self.server.proc.wait()
        if not self.killed_by_us:
            if self.server.proc.returncode != -9:
                raise RuntimeError(f"the server exited by itself: {self.server.output()}")
            point = self.point.partition(":")[0].replace("_", " ")
            self.kills[f"at a named point: {point}"] += 1
        self.server.close()
        self.start(self.rng.choice(POINTS) if self.killing else "")

    # -- the relay: dies while a mail is being delivered, sometimes ------------

    async def on_mail(self, server: Any, session: Any, envelope: Any) -> str:
        result = await self.relay_handle(server, session, envelope)
        if self.deliver_kill and self.killing and self.rng.random() < 0.5:
            self.kill("while delivering a mail")
        return result

    def on_slack_post(self, args: dict[str, Any]) -> None:
        if self.deliver_kill and self.killing and self.rng.random() < 0.5:
            self.kill("while delivering a Slack post")

    # -- driving ----------------------------------------------------------------

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response | None:
        try:
            return httpx.request(method, f"http://127.0.0.1:{self.port}{path}", timeout=5, **kw)
        except httpx.HTTPError:
            return None  # the server died under us: the caller tries again

    def launch(self, i: int) -> str | None:
        if i % 3 == 0:  # a third of the threads come by email
            msg = EmailMessage()
            msg["From"], msg["To"] = f"user{i}@example.com", "bot@example.com"
            msg["Subject"], msg["Message-ID"] = f"order {i}", f"<order{i}@client>"
            msg.set_content(f"please process order {i}")
            try:
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5) as smtp:
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
            try:
                r = SlackSender(f"http://127.0.0.1:{self.port}").event(event, event_id=f"Ev{i}")
            except httpx.HTTPError:
                return None
            return f"slack:{i}" if r.status_code == 200 else None
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
            # A server set to die at a named point gets a few seconds to get there.
            if self.point and time.monotonic() - self.started_at < 4:
                continue
            if self.killing:
                self.kill("at a random moment")

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.killing = True
        self.start("")
        ids: dict[int, str] = {}
        pending = set(range(self.args.threads))
        done: set[str] = set()
        threading.Thread(target=self.killer, daemon=True).start()
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            if self.kills.total() >= self.args.kills and self.killing:
                self.killing = False  # enough: let everything finish
                deadline = min(deadline, time.monotonic() + self.args.settle)
            self.ensure_running()
            for i in sorted(pending):
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
            if not self.killing and not pending and len(done) == self.args.threads:
                break
            time.sleep(0.02)
        self.killing = False
        self.ensure_running()
        report = self.check(ids, time.monotonic() - t0)
        assert self.server is not None
        self.server.stop()
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
            self.ensure_running()
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
        ledger = collections.Counter(
            line.split()[1] for line in self.ledger.read_text().splitlines()
        )
        twice = {call: n for call, n in ledger.items() if n > 1}
        duplicates = nudged_twice = outcomes_twice = overdue = 0
        timers = collections.Counter[str]()
        follow_ups: set[tuple[str, int]] = set()  # (thread, seq) of reminders and escalations
        delivered = collections.Counter[tuple[str, int, str]]()  # (thread, seq, channel)
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
        }


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
    args = p.parse_args(argv)
    atexit.register(stop_strays)
    with (
        tempfile.TemporaryDirectory() as d,
        FakeOpenAI().serve() as model,
        CaptureRelay().serve() as relay,
        FakeSlack().serve() as slack,
    ):
        model.add(*[make_brain(follow_up_channels())] * 100_000)
        harness = Harness(args, Path(d), model, relay, slack)
        report = harness.run()
    print(json.dumps(report, indent=2))
    v = report["violations"]
    print(
        f"\n{report['kills_total']} kills, "
        f"{report['threads_done']}/{report['threads']} threads done, "
        f"{report['acknowledged_responses']} acknowledged responses, {report['seconds']} s; "
        + ", ".join(f"{k.replace('_', ' ')}: {n}" for k, n in v.items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(v.values()) or report["threads_done"] < report["threads"] else 0


if __name__ == "__main__":
    sys.exit(main())
