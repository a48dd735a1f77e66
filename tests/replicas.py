"""Several `threadbot serve` replicas on one PostgreSQL, and what they share.

    python -m tests.replicas [--kills 20] [--restarts 10] [--cuts 3] [--netns]

measures takeover after SIGKILL of either replica (and, with --cuts, after
one host's network is cut; needs root), and counts live replicas' threads
taken over after PostgreSQL restarts (there must be none).

A replica is `threadbot serve` as a subprocess with its own HTTP and SMTP
ports; every replica talks to the same fake model, fake Slack Web API, mail
relay and tool ledger. The model is a stateless script: a thread's first
message names its plan (`plan t1: ask deploy`), and each request is answered
with the plan's first step the conversation has not made yet, so that a
replica that takes a thread over gets the replies the dead one would have.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import smtplib
import socket
import socketserver
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from store.postgres import JUDGE_AFTER

from .fakes import REPO, FakeOpenAI, Reply, ServerProcess, calls, free_port, text
from .mail_fake import CaptureRelay, text_of
from .pg import PostgresServer
from .slack_fake import SECRET, FakeSlack

ADMIN = {"Authorization": "Bearer replica-admin"}
BOT = "bot@example.com"
ANN = "ann@example.com"
LEAD = "lead@example.com"
"""Who approves by mail."""
TOOLS = REPO / "tests" / "replica_tools.py"

STEPS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "ask": ("request_human_input", lambda tag: {"question": f"Which region for {tag}?"}),
    "deploy": ("deploy", lambda tag: {"service": tag, "version": "1"}),
    "charge": ("slow_charge", lambda tag: {"amount": 1}),
    "fetch": ("slow_fetch", lambda tag: {"key": tag}),
    "lookup": ("lookup", lambda tag: {"name": tag}),
}
"""A plan's step → the tool the model calls and its arguments. A step
written `fetch~` is answered after the model thinks for `Brain.think` s;
`askfetch` asks a question and fetches at once (two calls in one reply)."""

_PLAN = re.compile(r"plan (\S+): ([\w~ ]+)")


def plan_reply(body: dict[str, Any], think: float) -> Reply:
    """The model's reply: the plan's next step, or `<tag> done` at its end."""
    messages = body["messages"]
    first = next(m["content"] for m in messages if m["role"] == "user")
    found = _PLAN.search(first)
    if found is None:
        return text("I follow plans only.")
    tag, steps = found[1], found[2].split()
    made = sum(1 for m in messages if m["role"] == "assistant" and m.get("tool_calls"))
    if made >= len(steps):
        return text(f"{tag} done")
    step = steps[made]
    if step.endswith("~"):
        time.sleep(think)
    if step == "askfetch":
        return calls(*((name, args(tag)) for name, args in (STEPS["ask"], STEPS["fetch"])))
    name, args = STEPS[step.rstrip("~")]
    return calls((name, args(tag)))


@dataclass
class Brain(FakeOpenAI):
    """The fake model, answering every request by its thread's plan."""

    think: float = 2.0
    asked_at: list[float] = field(default_factory=list)
    """When each of `requests` came."""

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.requests.append(body)
            self.asked_at.append(time.time())
        return plan_reply(body, self.think)

    def asked(self, tag: str) -> list[float]:
        """When the model was asked about the thread tagged `tag`."""
        with self.lock:
            return [
                at
                for at, b in zip(self.asked_at, self.requests, strict=True)
                if f"plan {tag}:" in json_text(b)
            ]


def json_text(body: dict[str, Any]) -> str:
    return " ".join(str(m.get("content")) for m in body["messages"])


class Replica(ServerProcess):
    """One replica: `threadbot serve` on the shared database, with an SMTP
    port of its own."""

    def __init__(
        self,
        db: str,
        model: FakeOpenAI,
        ledger: Path,
        *,
        slack: FakeSlack | None = None,
        relay: CaptureRelay | None = None,
        slow: float = 3.0,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
        fakes_at: str | None = None,
        **extra: str,
    ) -> None:
        """`fakes_at`: the address at which the replica reaches the fakes
        (by default theirs, 127.0.0.1); `extra`: more settings."""

        def at(url: str) -> str:
            return url.replace("127.0.0.1", fakes_at) if fakes_at else url

        self.smtp_port = free_port()
        env = {
            "THREADBOT_DB": db,
            "OPENAI_BASE_URL": at(model.base_url),
            "OPENAI_API_KEY": "test",
            "THREADBOT_MODEL": "fake-model",
            "THREADBOT_TOOLS": str(TOOLS),
            "THREADBOT_TEST_LEDGER": str(ledger),
            "THREADBOT_TEST_SLOW": str(slow),
            "THREADBOT_API_TOKEN": ADMIN["Authorization"].split()[1],
            "THREADBOT_SMTP": f"{host}:{self.smtp_port}",
            "THREADBOT_EMAIL": BOT,
        }  # No THREADBOT_SECRET: the replicas share the one kept in the database.
        if relay is not None:
            env["THREADBOT_SMTP_RELAY"] = at(f"127.0.0.1:{relay.port}")
        if slack is not None:
            env.update(
                SLACK_BOT_TOKEN="xoxb-test",
                SLACK_SIGNING_SECRET=SECRET,
                SLACK_API_URL=at(slack.api_url),
            )
        super().__init__({**env, **extra}, host=host, prefix=prefix)

    def launch(self, body: str, key: str | None = None) -> str:
        headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
        r = httpx.post(f"{self.url}/threads", json={"text": body}, headers=headers, timeout=10)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = {**ADMIN, **({"Idempotency-Key": key} if key else {})}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=10)

    def thread(self, thread_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/threads/{thread_id}", headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait(self, thread_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        """The thread once it is in one of `statuses`, with nothing left to
        deliver (what it posted is recorded)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.thread(thread_id)
            if body["status"] in statuses and not undelivered(body):
                return body
            assert time.monotonic() < deadline, (statuses, body)
            time.sleep(0.02)

    def send_mail(self, msg: EmailMessage, *, to: str = BOT) -> None:
        sender = msg["From"].addresses[0].addr_spec
        with smtplib.SMTP(self.host, self.smtp_port, timeout=10) as smtp:
            smtp.sendmail(sender, [to], msg.as_bytes())


def undelivered(body: dict[str, Any]) -> bool:
    """Whether the bot still owes a channel a post of the thread: the last
    event it would post has no `delivered` record yet (HTTP posts nothing)."""
    events = body["events"]
    origin = events[0].get("source", {}).get("channel")
    if origin not in ("slack", "email"):
        return False
    return bool(events[-1]["type"] != "delivered")


def types(body: dict[str, Any]) -> list[str]:
    return [e["type"] for e in body["events"]]


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def first_after(body: dict[str, Any], at: float) -> float | None:
    """When the first event after `at` (Unix time) was made, if any was."""
    return next((ts(e) for e in body["events"] if ts(e) > at), None)


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.02)
    return found


def ledger_lines(ledger: Path, word: str) -> list[str]:
    return [line for line in ledger.read_text().splitlines() if line.startswith(word)]


def summary(seconds: list[float]) -> str:
    return f"n={len(seconds)} p50={statistics.median(seconds):.2f}s max={max(seconds):.2f}s"


def both(*jobs: Callable[[], object]) -> None:
    """Run the jobs at once, each on a thread; re-raise the first failure."""
    failed: list[BaseException] = []

    def run(job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as e:
            failed.append(e)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[0]


def only_thread(r: Replica, title: str) -> dict[str, Any]:
    """The one thread with this title (there must be exactly one)."""
    listed = httpx.get(f"{r.url}/threads?limit=1000", headers=ADMIN, timeout=10).json()
    found = [t for t in listed if t["title"] == title]
    assert len(found) == 1, found
    return r.thread(found[0]["id"])


# -- mail ----------------------------------------------------------------------------


def mails(relay: CaptureRelay) -> list[EmailMessage]:
    with relay.lock:
        return [c.message for c in relay.messages]


def wait_mail(
    relay: CaptureRelay, says: str, thread_id: str | None = None, timeout: float = 20
) -> EmailMessage:
    """The bot's mail (of the thread, if given) whose text has `says`, once it came."""

    def find() -> EmailMessage | None:
        for m in mails(relay):
            if says in text_of(m) and thread_id in (None, thread_of_mail(m)):
                return m
        return None

    found: EmailMessage = wait_until(find, timeout, says)
    return found


def thread_of_mail(msg: EmailMessage) -> str:
    """The thread a mail of the bot's belongs to (its Message-ID names it)."""
    found = re.match(r"<tb\.([0-9a-f]+)\.", str(msg["Message-ID"]))
    assert found, msg["Message-ID"]
    return found[1]


def reply_address(msg: EmailMessage) -> str:
    return str(msg["Reply-To"].addresses[0].addr_spec)


def answer_to(msg: EmailMessage, body: str, *, sender: str = "ann@example.com") -> EmailMessage:
    """A reply to the bot's mail, as a person writes it."""
    out = EmailMessage()
    out["From"] = sender
    out["To"] = reply_address(msg)
    out["Subject"] = "Re: " + str(msg["Subject"]).removeprefix("Re: ")
    out["Message-ID"] = f"<r{uuid.uuid4().hex}@client.example>"
    out["In-Reply-To"] = msg["Message-ID"]
    out.set_content(body)
    return out


def new_mail(subject: str, body: str, *, sender: str = "ann@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Ann Example <{sender}>"
    msg["To"] = BOT
    msg["Subject"] = subject
    msg["Message-ID"] = f"<m{uuid.uuid4().hex}@client.example>"
    msg.set_content(body)
    return msg


# -- a replica killed mid-run ----------------------------------------------------------

INTERRUPTED = "interrupted, outcome unknown"

KILL_PLANS = {"charge": "charge", "fetch": "fetch", "think": "lookup~"}
"""What each thread is doing when its replica is killed: a slow
non-idempotent tool, a slow idempotent one, a slow model."""


def kill_mid_run(
    victim: Replica,
    survivor: Replica,
    brain: Brain,
    ledger: Path,
    round_: str,
    stop: Callable[[], None] | None = None,
    *,
    victim_lives: bool = False,
) -> tuple[dict[str, float], dict[str, str]]:
    """Start one thread of each `KILL_PLANS` on `victim`, stop it while each
    is in the middle of its slow part (SIGKILL, unless `stop` does something
    else), and check that `survivor` finishes them: nothing lost, the
    non-idempotent tool reported as interrupted and run once, the idempotent
    one run again to its end. Returns each thread's takeover time (from the
    stop to the survivor's first append for `charge`; to the survivor's start
    of the work for the others: running the tool again, asking the model
    again), and the threads' ids.

    If the victim lives on unseen (`victim_lives`: its host cut off), its
    own run of the idempotent tool may end as well."""
    tags = {kind: f"{round_}{kind}" for kind in KILL_PLANS}
    ids = {kind: victim.launch(f"plan {tags[kind]}: {plan}") for kind, plan in KILL_PLANS.items()}
    wait_until(lambda: "tool_started" in types(victim.thread(ids["charge"])), what="charge")
    wait_until(lambda: ledger_lines(ledger, f"fetch start {tags['fetch']} "), what="fetch")
    wait_until(lambda: brain.asked(tags["think"]), what="the model")
    stopped_at = time.time()
    (stop or victim.kill)()
    took: dict[str, float] = {}
    for kind, thread_id in ids.items():
        tag = tags[kind]
        done = survivor.wait(thread_id, "done", timeout=60)
        first = first_after(done, stopped_at)
        assert first is not None
        took[kind] = first - stopped_at
        assert done["events"][-1]["text"] == f"{tag} done"
        results = [e for e in done["events"] if e["type"] == "tool_result"]
        calls_made = [e for e in done["events"] if e["type"] == "tool_call"]
        assert len(results) == len(calls_made) == 1, done["events"]
        (result,) = results
        call_id = calls_made[0]["call_id"]
        if kind == "charge":
            assert result["is_error"] and result["output"].startswith(INTERRUPTED)
            assert len([ln for ln in ledger_lines(ledger, "charge ") if call_id in ln]) == 1
        elif kind == "fetch":
            assert result == {**result, "output": f"report {tag}", "is_error": False}
            started = ledger_lines(ledger, f"fetch start {tag} ")
            assert len(started) == 2
            ended = len(ledger_lines(ledger, f"fetch end {tag} "))
            assert ended == 1 or (victim_lives and ended == 2)
            took[kind] = float(started[1].rpartition("at=")[2]) - stopped_at
        else:
            assert not result["is_error"]
            asked = brain.asked(tag)  # by each replica for the call, then for the end
            assert len(asked) == 3
            took[kind] = asked[1] - stopped_at
    return took, ids


def kill_and_restart(
    victim: Replica, survivor: Replica, brain: Brain, ledger: Path, round_: str
) -> list[float]:
    """`kill_mid_run`, the victim started again at once (it finds its
    threads taken over); the takeover times."""
    restart = threading.Thread(target=victim.start)

    def kill() -> None:
        victim.kill()
        restart.start()

    took, _ = kill_mid_run(victim, survivor, brain, ledger, round_, kill)
    restart.join()
    print(f"takeover after SIGKILL, round {round_}: {took}")
    return list(took.values())


# -- hosts of their own: network namespaces --------------------------------------------

NETNS_ENV = "THREADBOT_NETNS_TESTS"
PREFIX = "tbr"
"""Names of the namespaces and links these tests make: `tbr<pid><name>`."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_available() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command"
    name = f"{PREFIX}{os.getpid()}probe"
    try:
        _ip("netns", "add", name)
    except RuntimeError as e:
        return str(e)
    _ip("netns", "del", name)
    return None


class Hosts:
    """Network namespaces as hosts on one network: a bridge in the root
    namespace has `.1` of 10.200.N.0/24 (where PostgreSQL and the fakes are
    reached), and each host a veth pair to it and the next address. Removed
    on exit, whatever happened; leftovers of a killed run are removed at start."""

    def __init__(self, *names: str) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        net = os.getpid() % 200 + 20
        self.gateway = f"10.200.{net}.1"
        self.subnet = f"10.200.{net}.0/24"
        self.addresses = {name: f"10.200.{net}.{i + 2}" for i, name in enumerate(names)}
        self.bridge = f"{self.tag}br"

    def netns(self, name: str) -> str:
        return f"{self.tag}{name}"

    def link(self, name: str) -> str:
        """The root namespace's end of the host's cable."""
        return f"{self.tag}{name}v"

    def prefix(self, name: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns(name))

    def cut(self, name: str) -> None:
        """Unplug the host: no FIN, no RST; its processes keep running."""
        _ip("link", "set", self.link(name), "down")

    def mend(self, name: str) -> None:
        _ip("link", "set", self.link(name), "up")

    def __enter__(self) -> Hosts:
        _remove_leftovers()
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name, address in self.addresses.items():
                ns, outside = self.netns(name), self.link(name)
                _ip("netns", "add", ns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", outside, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        _remove(self.tag)


def _remove(tag: str) -> None:
    """Every namespace and link named with `tag` (a namespace takes its end
    of a veth pair with it, and the pair goes)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in names.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(tag):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for found in re.finditer(r"^\d+: ([^:@]+)", links, re.M):
        if found[1].startswith(tag):
            subprocess.run(["ip", "link", "del", found[1]], capture_output=True)


def _remove_leftovers() -> None:
    """What a run that was killed left (its pid is gone)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for pid in set(re.findall(rf"\b{PREFIX}(\d+)", names + links)):
        if not Path(f"/proc/{pid}").exists():
            _remove(f"{PREFIX}{pid}")


class Forward:
    """A TCP port at `host` that forwards to the same service on 127.0.0.1,
    so that hosts on the bridge reach the loopback fakes."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: socketserver.ThreadingTCPServer | None = None

    def __enter__(self) -> Forward:
        target = ("127.0.0.1", self.port)

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(target) as upstream:
                    _pipe(self.request, upstream)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join()


# -- measuring, many rounds ---------------------------------------------------------------


def restart_mid_run(server: PostgresServer, runner: Replica, ledger: Path, round_: str) -> bool:
    """Restart PostgreSQL while `runner` runs a slow non-idempotent tool;
    whether the thread was taken from it (its tool reported interrupted)."""
    _settled(runner, "-")  # a read first: this counts takeovers, not a failed first write
    thread_id = runner.launch(f"plan {round_}: charge")
    wait_until(lambda: "tool_started" in types(runner.thread(thread_id)), what="charge")
    server.restart()
    done = wait_until(lambda: _settled(runner, thread_id), timeout=30, what="the thread")
    result = next(e for e in done["events"] if e["type"] == "tool_result")
    return bool(result["is_error"])


def _settled(r: Replica, thread_id: str) -> dict[str, Any] | None:
    with contextlib.suppress(httpx.HTTPError, AssertionError):
        body = r.thread(thread_id)
        return body if body["status"] == "done" else None
    return None


def main() -> None:
    import argparse
    import random
    import tempfile
    from contextlib import ExitStack
    from functools import partial

    parser = argparse.ArgumentParser(prog="python -m tests.replicas")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--cuts", type=int, default=0, help="needs network namespaces")
    parser.add_argument("--netns", action="store_true", help="each replica on a host of its own")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="threadbot-replicas-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        ledger = work / "ledger.txt"
        ledger.touch()
        brain = Brain()
        stack.enter_context(brain.serve())
        hosts = stack.enter_context(Hosts("a", "b")) if args.netns or args.cuts else None
        if hosts is None:
            server = stack.enter_context(PostgresServer())
            where: list[dict[str, Any]] = [{}, {}]
        else:
            server = stack.enter_context(
                PostgresServer(listen=[hosts.gateway], trust=[hosts.subnet])
            )
            stack.enter_context(Forward(hosts.gateway, brain.port))
            where = [
                {"host": hosts.addresses[n], "prefix": hosts.prefix(n), "fakes_at": hosts.gateway}
                for n in "ab"
            ]
        db = server.create_database("threadbot")
        a, b = (Replica(db, brain, ledger, **w) for w in where)
        for r in (a, b):
            stack.callback(r.stop)
        both(a.start, b.start)
        pair = (a, b)

        took: dict[str, list[float]] = {kind: [] for kind in KILL_PLANS}
        for n in range(args.kills):
            victim = rng.choice(pair)
            survivor = b if victim is a else a
            # At a random moment of the survivor's look for orphans (every 2 s).
            time.sleep(rng.random() * 2)
            restart = threading.Thread(target=victim.start)

            def kill(victim: Replica = victim, restart: threading.Thread = restart) -> None:
                victim.kill()
                restart.start()

            each, _ = kill_mid_run(victim, survivor, brain, ledger, f"k{n}x", kill)
            restart.join()
            for kind, t in each.items():
                took[kind].append(t)
        if args.kills:
            print(f"takeover after SIGKILL ({'two hosts' if hosts else 'loopback'}):")
            for kind, times in took.items():
                print(f"  {kind:6} {summary(times)}")
            print(f"  all    {summary([x for xs in took.values() for x in xs])}")

        cut: list[float] = []
        for n in range(args.cuts):
            assert hosts is not None
            try:
                each, _ = kill_mid_run(
                    a, b, brain, ledger, f"c{n}x", partial(hosts.cut, "a"), victim_lives=True
                )
            finally:
                hosts.mend("a")
            cut += each.values()
            a.wait(a.launch(f"plan c{n}back: lookup"), "done")  # back in service
        if args.cuts:
            print(f"takeover after a host's network is cut: {summary(cut)}")

        taken = 0
        for n in range(args.restarts):
            time.sleep(rng.random() * 2 + JUDGE_AFTER)
            taken += restart_mid_run(server, rng.choice(pair), ledger, f"r{n}x")
        if args.restarts:
            print(
                f"live replicas' threads taken over after a PostgreSQL restart: "
                f"{taken} of {args.restarts}"
            )
        charges = ledger_lines(ledger, "charge ")
        assert len(charges) == len(set(charges)), "a charge ran twice"
        if taken:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
