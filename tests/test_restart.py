"""Crash and restart: the thread in SQLite is all there is, and it is enough."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from .fakes import FakeOpenAI, ServerProcess, ask, calls, text
from .test_http import env_for, wait_status


def test_killed_after_tool_started_is_not_run_again(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    fake_openai.add(
        calls(("slow_charge", {"amount": 42})),
        text("The charge may or may not have gone through; please check."),
    )
    env = env_for(db_path, fake_openai, ledger, THREADBOT_TEST_SLOW="60")
    server = ServerProcess(env).start()
    with httpx.Client(base_url=server.url) as c:
        thread_id = c.post("/threads", json={"text": "charge 42"}).json()["id"]
        deadline = time.monotonic() + 10
        while "charge 42" not in ledger.read_text():  # the side effect happened...
            assert time.monotonic() < deadline
            time.sleep(0.02)
        events = c.get(f"/threads/{thread_id}").json()["events"]
        assert events[-1]["type"] == "tool_started"  # ...and no result was recorded
    server.kill()

    restarted = ServerProcess(env, port=server.port).start()
    try:
        assert "resumed 1 running thread" in restarted.output()
        with httpx.Client(base_url=restarted.url) as c:
            body = wait_status(c, thread_id, "done")
    finally:
        restarted.stop()
    types = [e["type"] for e in body["events"]]
    assert types == [
        "user_message",
        "tool_call",
        "tool_started",
        "tool_result",
        "assistant_message",
    ]
    result = body["events"][3]
    assert result["is_error"] is True
    assert "interrupted, outcome unknown" in result["output"]
    assert ledger.read_text().count("charge 42") == 1
    # The model was told, and answered from that.
    assert "interrupted, outcome unknown" in fake_openai.requests[-1]["messages"][-1]["content"]


def test_a_restart_keeps_every_thread(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> None:
    fake_openai.add(ask("Which version?"))
    fake_openai.add(calls(("deploy", {"service": "api", "version": "1"})))
    fake_openai.add(text("hello"))
    env = env_for(db_path, fake_openai, ledger)
    server = ServerProcess(env).start()
    ids: dict[str, str] = {}
    with httpx.Client(base_url=server.url) as c:
        for status, prompt in [
            ("waiting_for_human", "deploy"),
            ("waiting_for_approval", "deploy 1"),
            ("done", "hi"),
        ]:
            ids[status] = c.post("/threads", json={"text": prompt}).json()["id"]
            wait_status(c, ids[status], status)
        before = {i: c.get(f"/threads/{i}").json() for i in ids.values()}
    server.stop()

    restarted = ServerProcess(env, port=server.port).start()
    try:
        with httpx.Client(base_url=restarted.url) as c:
            after = {i: c.get(f"/threads/{i}").json() for i in ids.values()}
            assert after == before
            listed = {t["id"]: t["status"] for t in c.get("/threads").json()}
            assert listed == {i: s for s, i in ids.items()}
            # And they go on where they stopped.
            fake_openai.add(text("Deployed."))
            c.post(f"/threads/{ids['waiting_for_approval']}/approvals", json={"approved": True})
            wait_status(c, ids["waiting_for_approval"], "done")
    finally:
        restarted.stop()
    assert ledger.read_text().startswith("deploy api 1 ")


def test_a_deadline_that_passes_while_the_server_is_down_fires_once_on_restart(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    """THREADBOT_DEADLINE, the operator's default for approvals: the timer is
    in the thread's events, so a SIGKILL loses nothing and the restart finds
    it overdue."""
    fake_openai.add(calls(("deploy", {"service": "api", "version": "1"})))
    fake_openai.add(text("Nobody approved in time, so nothing was deployed."))
    env = env_for(db_path, fake_openai, ledger, THREADBOT_DEADLINE="2s")
    server = ServerProcess(env).start()
    with httpx.Client(base_url=server.url) as c:
        thread_id = c.post("/threads", json={"text": "deploy 1"}).json()["id"]
        body = wait_status(c, thread_id, "waiting_for_approval")
    server.kill()
    call = body["events"][1]
    assert (call["timers"]["deadline"], call["timers"]["on_deadline"]) == (2.0, "reject")
    assert body["pending"]["deadline"].endswith("Z")
    time.sleep(2.5)  # the deadline passes while nothing runs

    restarted = ServerProcess(env, port=server.port).start()
    try:
        with httpx.Client(base_url=restarted.url) as c:
            body = wait_status(c, thread_id, "done")
            time.sleep(0.5)  # anything fired twice would be there by now
            body = c.get(f"/threads/{thread_id}").json()
    finally:
        restarted.stop()
    decisions = [e for e in body["events"] if e["type"] == "approval"]
    assert len(decisions) == 1
    assert decisions[0]["approved"] is False
    source = decisions[0]["source"]
    assert (source["channel"], source["auth"]) == ("system", "deadline")
    assert ledger.read_text() == ""
    assert "deadline" in fake_openai.requests[-1]["messages"][-1]["content"]
