"""Several `threadbot serve` replicas on one PostgreSQL, through real protocols.

HTTP with httpx, Slack as signed events through the real Bolt app against a
fake Web API, mail through the replicas' own aiosmtpd servers and a local
relay, the real `openai` client against a fake model; replicas are killed
with SIGKILL. The fake model answers by each thread's plan (see
`tests.replicas`), so that whichever replica asks gets the same reply."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from . import pg
from .mail_fake import CaptureRelay, text_of
from .replicas import (
    ANN,
    LEAD,
    Brain,
    Replica,
    answer_to,
    both,
    kill_mid_run,
    ledger_lines,
    mails,
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
from .test_slack import mention, message, posts


@pytest.fixture(scope="module")
def brain() -> Iterator[Brain]:
    with Brain().serve() as b:
        yield b  # type: ignore[misc]


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
    on_pg = Replica(pg_url, brain, ledger).start()
    on_sqlite = Replica(str(tmp_path / "threadbot.db"), brain, ledger).start()
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
    started = [threading.Thread(target=r.start) for r in (a, b)]
    for t in started:
        t.start()
    for t in started:
        t.join()
    yield a, b
    for r in (a, b):
        r.stop()


def test_a_thread_launched_on_one_replica_is_answered_on_the_other(
    pair: tuple[Replica, Replica], ledger: Path
) -> None:
    for n, (first, second) in enumerate((pair, pair[::-1])):
        tag = f"x{n}"
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


def test_a_slack_event_sent_to_both_replicas_is_stored_once(
    pair: tuple[Replica, Replica], slack: FakeSlack
) -> None:
    a, b = pair
    ev = mention("C_REPL", "plan s1: ask")
    body, headers = SlackSender(a.url).signed_event(ev, event_id="EvREPL1")

    def deliver(r: Replica) -> None:
        got = httpx.post(f"{r.url}/slack/events", content=body, headers=headers, timeout=10)
        assert got.status_code == 200, got.text

    both(lambda: deliver(a), lambda: deliver(b))
    question = posts(slack, "C_REPL", 1)[0]
    assert "Which region for s1?" in json.dumps(question["blocks"])
    thread_id = only_thread(a, "plan s1: ask")["id"]
    a.wait(thread_id, "waiting_for_human")
    # The reply, too, reaches both.
    reply = message("C_REPL", "eu-west", thread_ts=ev["ts"])
    body, headers = SlackSender(a.url).signed_event(reply, event_id="EvREPL2")
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
    # One post per thing said, whichever replica said it.
    said = [p for p in slack.called("chat.postMessage") if p["channel"] == "C_REPL"]
    assert len(said) == 2, said
    assert "s1 done" in json.dumps(said[1]["blocks"])
    assert len(only_thread(b, "plan s1: ask")["events"]) == len(done["events"])


def test_a_mail_answer_to_the_other_replica_is_acted_on(
    pair: tuple[Replica, Replica], relay: CaptureRelay, ledger: Path
) -> None:
    a, b = pair
    a.send_mail(new_mail("plan m1", "plan m1: ask deploy"))
    question = wait_mail(relay, "Which region for m1?")
    thread_id = thread_of_mail(question)
    b.send_mail(answer_to(question, "eu-west"), to=reply_address(question))
    request = wait_mail(relay, "Approval needed before I run deploy", thread_id)
    assert request["To"] == LEAD
    a.send_mail(answer_to(request, "approve", sender=LEAD), to=reply_address(request))
    done = b.wait(thread_id, "done")
    wait_mail(relay, "m1 done", thread_id)
    assert types(done).count("human_response") == 1 and types(done).count("approval") == 1
    assert len(ledger_lines(ledger, "deploy m1 1 ")) == 1
    # Each mail once, whichever replica sent it: the question, the request to
    # the approver and its notice to Ann, the outcome.
    sent = [(m["To"], text_of(m)) for m in mails(relay) if thread_of_mail(m) == thread_id]
    assert [to for to, _ in sent] == [ANN, LEAD, ANN, ANN], sent
    assert len(set(sent)) == 4, sent


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
    assert max(paused) < 1.0 and max(busy) < 1.0


def test_a_killed_replicas_threads_finish_on_the_other(
    pair: tuple[Replica, Replica], brain: Brain, ledger: Path
) -> None:
    a, b = pair
    took: list[float] = []
    for n, (victim, survivor) in enumerate(((a, b), (b, a))):
        each = kill_mid_run(victim, survivor, brain, ledger, f"k{n}")
        print(f"takeover after SIGKILL, round {n}: {each}")
        took += each.values()
        victim.start()
    print(f"takeover after SIGKILL: {summary(took)}")
    assert max(took) < 15
