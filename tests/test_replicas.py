"""Several `threadbot serve` replicas on one PostgreSQL, through real protocols.

HTTP with httpx, Slack as signed events through the real Bolt app against a
fake Web API, mail through the replicas' own aiosmtpd servers and a local
relay, the real `openai` client against a fake model; replicas are killed
with SIGKILL. The fake model answers by each thread's plan (see
`tests.replicas`), so that whichever replica asks gets the same reply."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import httpx
import pytest

from store import open_store
from store.postgres import JUDGE_AFTER, RELISTEN_MAX

from . import pg
from .mail_fake import CaptureRelay, text_of
from .replicas import (
    ADMIN,
    ANN,
    KILL_PLANS,
    LEAD,
    NETNS_ENV,
    Brain,
    Forward,
    Hosts,
    Replica,
    answer_to,
    both,
    kill_and_restart,
    kill_mid_run,
    ledger_lines,
    mails,
    netns_available,
    new_mail,
    only_thread,
    reply_address,
    summary,
    thread_of_mail,
    ts,
    types,
    wait_mail,
    wait_until,
)
from .slack_fake import FakeSlack, SlackSender
from .test_slack import finished, mention, message, posts


@pytest.fixture(scope="module")
def brain() -> Iterator[Brain]:
    b = Brain()
    with b.serve():
        yield b


@pytest.fixture(scope="module")
def shared_db(postgres: pg.Postgres) -> Iterator[str]:
    """One database for the module's replicas."""
    name = f"threadbot_replicas_{uuid.uuid4().hex[:12]}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


# -- one replica on PostgreSQL, and the same script on SQLite --------------------------


def http_script(r: Replica, tag: str) -> dict[str, list[str]]:
    """A question, an approval, a fork (its key used twice) and its
    cancellation, over HTTP: the event types of each thread."""
    thread_id = r.launch(f"plan {tag}: ask deploy")
    asked = r.wait(thread_id, "waiting_for_human")
    assert asked["pending"]["question"] == f"Which region for {tag}?"
    answered = r.post(f"/threads/{thread_id}/responses", {"text": "eu-west"})
    assert answered.status_code == 202, answered.text
    waiting = r.wait(thread_id, "waiting_for_approval")
    assert waiting["pending"]["tool"] == "deploy"
    approved = r.post(f"/threads/{thread_id}/approvals", {"approved": True}, key=f"{tag}-ok")
    assert approved.status_code == 202 and not approved.json()["duplicate"], approved.text
    again = r.post(f"/threads/{thread_id}/approvals", {"approved": True}, key=f"{tag}-ok")
    assert again.status_code == 202 and again.json()["duplicate"], again.text
    done = r.wait(thread_id, "done")
    assert done["events"][-1]["text"] == f"{tag} done"

    # Forked at the question: the copy asks again, and is cancelled there.
    at = next(e["seq"] for e in done["events"] if e["type"] == "tool_call")
    fork = r.post(f"/threads/{thread_id}/fork", {"at": at}, key=f"{tag}-fork")
    assert fork.status_code == 201, fork.text
    same = r.post(f"/threads/{thread_id}/fork", {"at": at}, key=f"{tag}-fork")
    assert same.status_code == 201 and same.json()["id"] == fork.json()["id"]
    forked = fork.json()["id"]
    r.wait(forked, "waiting_for_human")
    cancelled = r.post(f"/threads/{forked}/cancel", {"reason": "not needed"})
    assert cancelled.status_code == 202, cancelled.text
    body = r.wait(forked, "cancelled")
    assert body["pending"] is None
    refused = r.post(f"/threads/{forked}/responses", {"text": "late"})
    assert refused.status_code == 409, refused.text
    return {"thread": types(done), "fork": types(r.thread(forked))}


def test_http_flows_on_postgres_give_what_sqlite_gives(
    pg_url: str, brain: Brain, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    on_pg = Replica(pg_url, brain, ledger)
    on_sqlite = Replica(str(tmp_path / "threadbot.db"), brain, ledger)
    both(on_pg.start, on_sqlite.start)
    try:
        got = http_script(on_pg, "pg1")
        expected = http_script(on_sqlite, "lite1")
    finally:
        on_pg.stop()
        on_sqlite.stop()
    assert got == expected
    assert got["thread"] == [
        "user_message",
        "tool_call",
        "human_response",
        "tool_call",
        "approval",
        "tool_started",
        "tool_result",
        "assistant_message",
    ]
    assert got["fork"] == ["user_message", "tool_call", "cancelled"]
    assert len(ledger_lines(ledger, "deploy pg1 1 ")) == 1
    assert len(ledger_lines(ledger, "deploy lite1 1 ")) == 1


# -- a restart of PostgreSQL -----------------------------------------------------------


@pytest.fixture
def own_pg(postgres: pg.Postgres) -> Iterator[pg.PostgresServer]:
    """A server of the test's own, to restart (the session's one serves
    other tests' replicas meanwhile)."""
    reason = pg.available()
    if reason is not None:
        pytest.fail(f"PostgreSQL binaries are not available to restart a server: {reason}")
    with pg.PostgresServer() as server:
        yield server


@pytest.mark.anyio
async def test_a_postgresql_restart_takes_no_live_runner_for_dead(
    own_pg: pg.PostgresServer,
) -> None:
    """A restart ends every presence connection at once. A replica must not
    take the threads of another that is alive but has not taken its lock
    again yet; a dead one it judges dead, once it has listened a while."""
    url = own_pg.create_database("threadbot")
    judge, live, dead = open_store(url), open_store(url), open_store(url)
    live.hold_presence("runner-live")  # alive, and (no listener) slow to come back
    dead.hold_presence("runner-dead")
    listening = asyncio.create_task(judge.listen(lambda *_: None))
    try:
        dead.close()
        await asyncio.sleep(JUDGE_AFTER + 0.5)  # the judge's listener is settled
        assert await asyncio.to_thread(judge.owner_gone, "runner-dead") is True
        assert await asyncio.to_thread(judge.owner_gone, "runner-live") is False
        await asyncio.to_thread(own_pg.restart)
        assert await asyncio.to_thread(judge.owner_gone, "runner-live") is False
        await asyncio.sleep(RELISTEN_MAX)  # its listener has noticed, and reconnected
        assert await asyncio.to_thread(judge.owner_gone, "runner-live") is False
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        judge.close()
        live.close()


def test_the_first_requests_after_a_postgresql_restart_are_served(
    own_pg: pg.PostgresServer, brain: Brain, tmp_path: Path
) -> None:
    """Every connection a replica keeps idle is ended by a restart: the
    next write and read get new ones rather than an error."""
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    r = Replica(own_pg.create_database("threadbot"), brain, ledger).start()
    try:
        r.wait(r.launch("plan rs1: lookup"), "done")
        own_pg.restart()
        thread_id = r.launch("plan rs2: ask")  # a write first
        assert r.wait(thread_id, "waiting_for_human")["pending"]["question"]
        own_pg.restart()
        listed = httpx.get(f"{r.url}/threads", headers=ADMIN, timeout=10)  # a read first
        assert listed.status_code == 200 and len(listed.json()) == 2
    finally:
        r.stop()


# -- two replicas, one database --------------------------------------------------------


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


@pytest.fixture(scope="module")
def relay() -> Iterator[CaptureRelay]:
    with CaptureRelay().serve() as r:
        yield r


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replicas") / "ledger.txt"
    path.touch()
    return path


@pytest.fixture(scope="module")
def pair(
    shared_db: str, brain: Brain, ledger: Path, slack: FakeSlack, relay: CaptureRelay
) -> Iterator[tuple[Replica, Replica]]:
    """Replicas A and B, started together (their migrations race)."""
    a, b = (
        Replica(shared_db, brain, ledger, slack=slack, relay=relay, THREADBOT_EMAIL_APPROVERS=LEAD)
        for _ in "ab"
    )
    both(a.start, b.start)
    yield a, b
    for r in (a, b):
        r.stop()


def answered_across(first: Replica, second: Replica, ledger: Path, tag: str) -> None:
    """Launched through `first`, answered and approved through `second`."""
    thread_id = first.launch(f"plan {tag}: ask deploy")
    second.wait(thread_id, "waiting_for_human")
    r = second.post(f"/threads/{thread_id}/responses", {"text": "eu-west"})
    assert r.status_code == 202, r.text
    first.wait(thread_id, "waiting_for_approval")
    r = second.post(f"/threads/{thread_id}/approvals", {"approved": True})
    assert r.status_code == 202, r.text
    done = first.wait(thread_id, "done")
    # (The approver's mail may still be marked as delivered.)
    assert second.thread(thread_id)["events"][: len(done["events"])] == done["events"]
    assert types(done).count("tool_result") == 1
    assert len(ledger_lines(ledger, f"deploy {tag} 1 ")) == 1


def slack_event_to_both(a: Replica, b: Replica, slack: FakeSlack, tag: str) -> None:
    """A mention, and the reply to the question it leads to, each delivered
    to both replicas (as a retry through a load balancer may): each is
    stored once, and each thing the bot says is posted once."""
    channel = f"C_{tag.upper()}"
    ev = mention(channel, f"plan {tag}: ask")
    body, headers = SlackSender(a.url).signed_event(ev, event_id=f"Ev{tag}1")

    def deliver(r: Replica) -> None:
        got = httpx.post(f"{r.url}/slack/events", content=body, headers=headers, timeout=10)
        assert got.status_code == 200, got.text

    both(lambda: deliver(a), lambda: deliver(b))
    question = posts(slack, channel, 1)[0]
    assert f"Which region for {tag}?" in json.dumps(question["blocks"])
    thread_id = only_thread(a, f"plan {tag}: ask")["id"]
    a.wait(thread_id, "waiting_for_human")
    reply = message(channel, "eu-west", thread_ts=ev["ts"])
    body, headers = SlackSender(a.url).signed_event(reply, event_id=f"Ev{tag}2")
    both(lambda: deliver(b), lambda: deliver(a))
    done = b.wait(thread_id, "done")
    assert types(done) == [
        "user_message",
        "tool_call",
        "delivered",
        "human_response",
        "delivered",
        "assistant_message",
        "delivered",
    ]
    # Said once each: the question posted, the answer streamed (by one replica).
    said = finished(slack, channel)
    assert [p["text"] for p in said][1:] == [f"{tag} done"], said
    assert len([p for p in slack.called("chat.postMessage") if p["channel"] == channel]) == 1
    assert len([a for a in slack.called("chat.startStream") if a["channel"] == channel]) == 1
    assert len(only_thread(b, f"plan {tag}: ask")["events"]) == len(done["events"])


def mail_answered_across(
    a: Replica, b: Replica, relay: CaptureRelay, ledger: Path, tag: str
) -> None:
    """Started by mail to A's SMTP port, answered by mail to B's, approved
    by mail to A's: each mail of the bot's sent once."""
    a.send_mail(new_mail(f"plan {tag}", f"plan {tag}: ask deploy"))
    question = wait_mail(relay, f"Which region for {tag}?")
    thread_id = thread_of_mail(question)
    b.send_mail(answer_to(question, "eu-west"), to=reply_address(question))
    request = wait_mail(relay, "Approval needed before I run deploy", thread_id)
    assert request["To"] == LEAD
    a.send_mail(answer_to(request, "approve", sender=LEAD), to=reply_address(request))
    done = b.wait(thread_id, "done")
    wait_mail(relay, f"{tag} done", thread_id)
    assert types(done).count("human_response") == 1 and types(done).count("approval") == 1
    assert len(ledger_lines(ledger, f"deploy {tag} 1 ")) == 1
    # The question, the request to the approver and its notice to Ann, the outcome.
    sent = [(m["To"], text_of(m)) for m in mails(relay) if thread_of_mail(m) == thread_id]
    assert [to for to, _ in sent] == [ANN, LEAD, ANN, ANN], sent
    assert len(set(sent)) == 4, sent


def test_a_thread_launched_on_one_replica_is_answered_on_the_other(
    pair: tuple[Replica, Replica], ledger: Path
) -> None:
    a, b = pair
    answered_across(a, b, ledger, "x0")
    answered_across(b, a, ledger, "x1")


def test_a_slack_event_sent_to_both_replicas_is_stored_once(
    pair: tuple[Replica, Replica], slack: FakeSlack
) -> None:
    slack_event_to_both(*pair, slack, "s1")


def test_a_mail_answer_to_the_other_replica_is_acted_on(
    pair: tuple[Replica, Replica], relay: CaptureRelay, ledger: Path
) -> None:
    mail_answered_across(*pair, relay, ledger, "m1")


def test_an_answer_through_one_replica_is_acted_on_at_once(
    pair: tuple[Replica, Replica], ledger: Path
) -> None:
    """B runs the threads; their answers come through A. Paused, a thread
    goes on as the answer is stored; busy on B (a slow tool beside the
    question), it goes on as B's tool ends."""
    a, b = pair
    paused: list[float] = []
    for n in range(3):
        thread_id = b.launch(f"plan w{n}: ask lookup")
        b.wait(thread_id, "waiting_for_human")
        sent = time.time()
        r = a.post(f"/threads/{thread_id}/responses", {"text": "eu-west"})
        assert r.status_code == 202, r.text
        done = b.wait(thread_id, "done")
        answer = next(e for e in done["events"] if e["type"] == "human_response")
        paused.append(ts(done["events"][answer["seq"] + 1]) - sent)
    busy: list[float] = []
    ids = {tag: b.launch(f"plan {tag}: askfetch") for tag in ("v0", "v1")}
    answered = {}
    for tag, thread_id in ids.items():
        wait_until(partial(ledger_lines, ledger, f"fetch start {tag} "), what="the fetch")
        r = a.post(f"/threads/{thread_id}/responses", {"text": "eu-west"})
        assert r.status_code == 202, r.text
        answered[tag] = r.json()["seq"]
    for tag, thread_id in ids.items():
        done = b.wait(thread_id, "done")
        result = next(e for e in done["events"] if e["type"] == "tool_result")
        assert result["seq"] > answered[tag]  # the answer came while the tool ran
        busy.append(ts(done["events"][result["seq"] + 1]) - ts(result))
    print(f"answer → next event: paused {summary(paused)}; busy, tool end → {summary(busy)}")
    # At once: B is woken by A's notification, not by a later look of its own
    # (the margin is for a loaded machine).
    assert max(paused) < 1.5 and max(busy) < 1.5


def test_a_killed_replicas_threads_finish_on_the_other(
    pair: tuple[Replica, Replica], brain: Brain, ledger: Path
) -> None:
    took: list[float] = []
    for n, (victim, survivor) in enumerate((pair, pair[::-1])):
        took += kill_and_restart(victim, survivor, brain, ledger, f"k{n}")
    print(f"takeover after SIGKILL: {summary(took)}")
    assert max(took) < 15


# -- two hosts: each replica in a network namespace of its own -------------------------

# They run wherever network namespaces can be made (root, iproute2);
# THREADBOT_NETNS_TESTS=1 makes their absence a failure, =0 skips them.
_netns_setting = os.environ.get(NETNS_ENV, "")
_no_netns = (
    f"{NETNS_ENV}=0"
    if _netns_setting == "0"
    else None
    if _netns_setting == "1"
    else netns_available()
)
two_hosts = pytest.mark.skipif(
    _no_netns is not None,
    reason=f"network namespaces cannot be made here ({_no_netns}); "
    f"{NETNS_ENV}=1 makes this a failure",
)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    reason = netns_available()
    if reason is not None:
        pytest.fail(f"network namespaces cannot be made: {reason}")
    with Hosts("a", "b") as h:
        yield h


@pytest.fixture(scope="module")
def host_pair(
    hosts: Hosts,
    brain: Brain,
    ledger: Path,
    slack: FakeSlack,
    relay: CaptureRelay,
) -> Iterator[tuple[Replica, Replica]]:
    """Replicas on hosts a and b; PostgreSQL (a server of its own) and the
    fakes on the bridge between them."""
    server = pg.PostgresServer(listen=[hosts.gateway], trust=[hosts.subnet])
    with ExitStack() as stack:
        stack.enter_context(server)
        for port in (brain.port, slack.port, relay.port):
            stack.enter_context(Forward(hosts.gateway, port))
        db = server.create_database("threadbot")
        a, b = (
            Replica(
                db,
                brain,
                ledger,
                slack=slack,
                relay=relay,
                host=hosts.addresses[name],
                prefix=hosts.prefix(name),
                fakes_at=hosts.gateway,
                THREADBOT_EMAIL_APPROVERS=LEAD,
                THREADBOT_EMAIL_SENDERS="@example.com",
            )
            for name in "ab"
        )
        stack.callback(b.stop)
        stack.callback(a.stop)
        both(a.start, b.start)
        yield a, b


@two_hosts
def test_two_hosts_share_threads_through_http_slack_and_mail(
    host_pair: tuple[Replica, Replica], ledger: Path, slack: FakeSlack, relay: CaptureRelay
) -> None:
    a, b = host_pair
    assert a.host != b.host and not a.host.startswith("127.")
    answered_across(a, b, ledger, "nx0")
    answered_across(b, a, ledger, "nx1")
    slack_event_to_both(a, b, slack, "ns1")
    mail_answered_across(a, b, relay, ledger, "nm1")


@two_hosts
def test_two_hosts_a_killed_replicas_threads_finish_on_the_other_host(
    host_pair: tuple[Replica, Replica], brain: Brain, ledger: Path
) -> None:
    took: list[float] = []
    for n, (victim, survivor) in enumerate((host_pair, host_pair[::-1])):
        took += kill_and_restart(victim, survivor, brain, ledger, f"nk{n}")
    print(f"two hosts, takeover after SIGKILL: {summary(took)}")
    assert max(took) < 15


@two_hosts
def test_two_hosts_a_cut_off_replicas_threads_finish_on_the_other_host(
    hosts: Hosts, host_pair: tuple[Replica, Replica], brain: Brain, ledger: Path
) -> None:
    """Host a loses its network (no FIN, no RST): b takes its threads over
    once PostgreSQL gives up on a's presence connection. When a comes back
    it believes for a moment that it holds their leases: it must run
    nothing again and write nothing into them, and go on serving."""
    a, b = host_pair
    try:
        took, ids = kill_mid_run(
            a, b, brain, ledger, "ncut", partial(hosts.cut, "a"), victim_lives=True
        )
        print(f"two hosts, takeover after a cut: {took}")
        settled = {thread_id: b.thread(thread_id) for thread_id in ids.values()}
    finally:
        hosts.mend("a")
    assert len(settled) == len(KILL_PLANS)
    assert min(took.values()) > 5 and max(took.values()) < 25
    # A is back: it serves and runs threads again, and what b finished stays as it was.
    answered_across(a, b, ledger, "nback")
    time.sleep(2)
    for thread_id, body in settled.items():
        assert b.thread(thread_id) == body
    assert len(ledger_lines(ledger, "charge ")) == len(set(ledger_lines(ledger, "charge ")))
