"""Deadlines, several pending calls, respond and cancel over HTTP: against
`threadbot serve` as a subprocess, with people's tokens; each refusal writes
nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, calls, text
from .test_http import env_for
from .test_identity import ADMIN, PEOPLE, bearer, events_of, token_for, wait_as_admin


@pytest.fixture
def env(tmp_path: Path, db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> dict[str, str]:
    (tmp_path / "people.toml").write_text(PEOPLE)
    return env_for(
        db_path,
        fake_openai,
        ledger,
        THREADBOT_PEOPLE=str(tmp_path / "people.toml"),
        THREADBOT_APPROVERS="group:ops",
        THREADBOT_API_TOKEN=ADMIN,
        THREADBOT_REMIND_AFTER="1s",
        THREADBOT_DEADLINE="1h",
    )


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[ServerProcess]:
    s = ServerProcess(env).start()
    yield s
    s.stop()


def launch(served: ServerProcess, fake: FakeOpenAI, *calls_made: tuple[str, dict[str, Any]]) -> str:
    fake.add(calls(*calls_made), text("Done."))
    r = httpx.post(f"{served.url}/threads", json={"text": "go"}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_pending_calls_deadlines_and_the_overdue_list(
    served: ServerProcess, env: dict[str, str], fake_openai: FakeOpenAI, ledger: Path
) -> None:
    thread_id = launch(
        served,
        fake_openai,
        ("deploy", {"service": "api", "version": "1"}),
        ("deploy", {"service": "web", "version": "2"}),
    )
    body = wait_as_admin(served.url, thread_id, "waiting_for_approval")
    first, second = body["pending_calls"]
    assert body["pending"] == first
    assert (first["arguments"]["service"], second["arguments"]["service"]) == ("api", "web")
    deadline = datetime.fromisoformat(first["deadline"])
    asked = datetime.fromisoformat(body["events"][1]["ts"])
    assert abs((deadline - asked).total_seconds() - 3600) < 0.01
    assert "remind_at" in first and first["approvers"] == ["group:ops"]
    admin = {"headers": bearer(ADMIN)}
    listed = httpx.get(f"{served.url}/threads?order=due", **admin).json()
    assert listed[0]["id"] == thread_id and listed[0]["due_at"].endswith("Z")
    assert httpx.get(f"{served.url}/threads?overdue=true", **admin).json() == []
    time.sleep(1.5)  # past the reminder: overdue now
    overdue = httpx.get(
        f"{served.url}/threads?status=waiting_for_approval&overdue=true", **admin
    ).json()
    assert [t["id"] for t in overdue] == [thread_id]
    types = [e["type"] for e in events_of(served, thread_id)]
    assert types.count("reminder") == 2  # one per waiting call
    # Answered in reverse order, each on its own.
    ann = bearer(token_for(env, "ann", "--scope", "approve"))
    url = f"{served.url}/threads/{thread_id}/approvals"
    r = httpx.post(url, json={"call_id": second["call_id"], "respond": "not web"}, headers=ann)
    assert r.status_code == 202, r.text
    r = httpx.post(url, json={"call_id": first["call_id"], "approved": True}, headers=ann)
    assert r.status_code == 202, r.text
    body = wait_as_admin(served.url, thread_id, "done")
    assert ledger.read_text().splitlines()[0].startswith("deploy api 1")
    assert "web" not in ledger.read_text()


def test_approvals_take_a_decision_or_a_response_not_both(
    served: ServerProcess, fake_openai: FakeOpenAI
) -> None:
    thread_id = launch(served, fake_openai, ("deploy", {"service": "api", "version": "1"}))
    wait_as_admin(served.url, thread_id, "waiting_for_approval")
    url = f"{served.url}/threads/{thread_id}/approvals"
    for body in (
        {},
        {"approved": True, "respond": "both"},
        {"respond": ""},
        {"respond": 3},
        {"respond": "x", "comment": "y"},
        {"respond": "x", "arguments": {"service": "web", "version": "1"}},
    ):
        r = httpx.post(url, json=body, headers=bearer(ADMIN))
        assert r.status_code == 422, (body, r.text)
        assert "error" in r.json()
    assert [e["type"] for e in events_of(served, thread_id)][-1] != "approval"


def test_an_idempotency_key_is_each_persons_own(
    served: ServerProcess, env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    """Two people who happen to send the same key are two requests: the
    second approval is recorded, and a stranger is refused, not told
    "duplicate"."""
    fake_openai.add(calls(("deploy", {"service": "api", "version": "1"})), text("Done."))
    r = httpx.post(f"{served.url}/threads", json={"text": "go"}, headers=bearer(ADMIN))
    thread_id = r.json()["id"]
    wait_as_admin(served.url, thread_id, "waiting_for_approval")
    url = f"{served.url}/threads/{thread_id}/approvals"
    same = {"Idempotency-Key": "approve-1"}
    bob = bearer(token_for(env, "bob", "--scope", "approve"))
    r = httpx.post(url, json={"approved": True}, headers={**bob, **same})
    assert r.status_code == 403  # Bob is no approver: refused, whatever the key
    ann = bearer(token_for(env, "ann", "--scope", "approve"))
    r = httpx.post(url, json={"approved": True}, headers={**ann, **same})
    assert r.status_code == 202 and r.json()["duplicate"] is False
    r = httpx.post(url, json={"approved": True}, headers={**bob, **same})
    assert r.status_code == 409  # not a duplicate of Ann's: already settled, by Ann
    r = httpx.post(url, json={"approved": True}, headers={**ann, **same})
    assert r.status_code == 202 and r.json()["duplicate"] is True


def test_cancel_over_http(
    served: ServerProcess, env: dict[str, str], fake_openai: FakeOpenAI, ledger: Path
) -> None:
    thread_id = launch(served, fake_openai, ("deploy", {"service": "api", "version": "1"}))
    wait_as_admin(served.url, thread_id, "waiting_for_approval")
    url = f"{served.url}/threads/{thread_id}/cancel"

    def written() -> int:  # the reminder, due at 1 s, and its mail do not count
        return sum(
            1 for e in events_of(served, thread_id) if e["type"] not in ("reminder", "delivered")
        )

    n = written()
    bob = bearer(token_for(env, "bob", "--scope", "approve"))  # takes no part, no approver
    r = httpx.post(url, json={"reason": "mine"}, headers=bob)
    assert r.status_code == 403 and "may not" in r.json()["error"]
    ann_answer = bearer(token_for(env, "ann", "--scope", "answer"))
    r = httpx.post(url, json={}, headers=ann_answer)
    assert r.status_code == 403  # cancelling takes the approve scope
    r = httpx.post(url, json={"reason": 5}, headers=bearer(ADMIN))
    assert r.status_code == 422
    assert written() == n
    ann = bearer(token_for(env, "ann", "--scope", "approve"))
    r = httpx.post(url, json={"reason": "wrong service"}, headers={**ann, "Idempotency-Key": "c1"})
    assert r.status_code == 202, r.text
    again = httpx.post(url, json={"reason": "x"}, headers={**ann, "Idempotency-Key": "c1"})
    assert again.status_code == 202 and again.json()["duplicate"] is True
    body = wait_as_admin(served.url, thread_id, "cancelled")
    # (The approver, reached by mail, has the cancellation recorded after it.)
    cancelled = next(e for e in body["events"] if e["type"] == "cancelled")
    assert cancelled["reason"] == "wrong service"
    assert cancelled["source"]["person"] == "ann"
    assert body["pending"] is None and body["pending_calls"] == []
    r = httpx.post(url, json={}, headers=ann)
    assert r.status_code == 409 and "nothing to cancel" in r.json()["error"]
    r = httpx.post(
        f"{served.url}/threads/{thread_id}/approvals", json={"approved": True}, headers=ann
    )
    assert r.status_code == 409
    assert ledger.read_text() == ""
