"""Who an HTTP request is: the local operator on a first run, the admin
token, people's own tokens. Against `threadbot serve` as a subprocess, with
curl-style clients; each refusal writes nothing."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, calls, serve_refused, text
from .test_cli import cli
from .test_http import env_for, wait_status

PEOPLE = """
[people.ann]
name = "Ann Lee"
email = "ann@example.com"
groups = ["ops"]

[people.bob]
name = "Bob"
email = "bob@example.com"

[people.root]
name = "Root"
groups = ["admins"]
"""
ADMIN = "admin-secret-token"


@pytest.fixture
def people_env(
    tmp_path: Path, db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> dict[str, str]:
    (tmp_path / "people.toml").write_text(PEOPLE)
    return env_for(
        db_path,
        fake_openai,
        ledger,
        THREADBOT_PEOPLE=str(tmp_path / "people.toml"),
        THREADBOT_APPROVERS="group:ops",
        THREADBOT_API_TOKEN=ADMIN,
    )


@pytest.fixture
def served(people_env: dict[str, str]) -> Iterator[ServerProcess]:
    s = ServerProcess(people_env).start()
    yield s
    s.stop()


def token_for(env: dict[str, str], person: str, *extra: str) -> str:
    done = cli(env, "tokens", "create", "--person", person, *extra)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("tb_") and "shown once" in done.stderr
    return token


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def waiting_deploy(
    client: httpx.Client, fake: FakeOpenAI, headers: dict[str, str]
) -> dict[str, Any]:
    fake.add(calls(("deploy", {"service": "api", "version": "1"})), text("Deployed."))
    r = client.post("/threads", json={"text": "deploy the api"}, headers=headers)
    assert r.status_code == 201, r.text
    return wait_as_admin(str(client.base_url), r.json()["id"], "waiting_for_approval")


def wait_as_admin(url: str, thread_id: str, status: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=10) as admin:
        return wait_status(admin, thread_id, status)


def events_of(served: ServerProcess, thread_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{served.url}/threads/{thread_id}", headers=bearer(ADMIN))
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def test_the_first_run_acts_as_the_local_operator(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    s = ServerProcess(env_for(db_path, fake_openai, ledger)).start()
    try:
        fake_openai.add(text("Hello."))
        r = httpx.post(s.url + "/threads", json={"text": "hi", "user": "alice"})
        assert r.status_code == 201
        with httpx.Client(base_url=s.url) as c:
            body = wait_status(c, r.json()["id"], "done")
        source = body["events"][0]["source"]
        assert source["auth"] == "operator" and source["admin"] is True
        assert source["user"] == "alice" and source["by"] == "local operator"
    finally:
        s.stop()


def test_people_tokens_approve_as_themselves(
    served: ServerProcess, people_env: dict[str, str], fake_openai: FakeOpenAI, ledger: Path
) -> None:
    ann = token_for(people_env, "ann", "--scope", "approve")
    bob = token_for(people_env, "bob", "--scope", "approve")
    with httpx.Client(base_url=served.url, timeout=10) as c:
        thread = waiting_deploy(c, fake_openai, bearer(bob))
        url = f"/threads/{thread['id']}/approvals"
        # Bob asked; he is not an approver (group:ops).
        r = c.post(url, json={"approved": True}, headers=bearer(bob))
        assert r.status_code == 403 and "approvers" in r.json()["error"]
        # Nor may he claim to be Ann.
        r = c.post(url, json={"approved": True, "user": "ann"}, headers=bearer(bob))
        assert r.status_code == 403 and "only an admin" in r.json()["error"]
        assert ledger.read_text() == ""
        # Ann may; the scheme is case-insensitive.
        r = c.post(url, json={"approved": True}, headers=bearer(ann, "bearer"))
        assert r.status_code == 202, r.text
        wait_as_admin(served.url, thread["id"], "done")
    approval = next(e for e in events_of(served, thread["id"]) if e["type"] == "approval")
    assert approval["source"]["person"] == "ann" and approval["source"]["name"] == "Ann Lee"
    assert approval["source"]["auth"].startswith("token:")
    assert "admin" not in approval["source"]
    assert ledger.read_text().count("deploy api 1") == 1


def test_the_admin_token_acts_for_someone_and_both_are_recorded(
    served: ServerProcess, fake_openai: FakeOpenAI
) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as c:
        thread = waiting_deploy(c, fake_openai, bearer(ADMIN))
        r = c.post(
            f"/threads/{thread['id']}/approvals",
            json={"approved": False, "comment": "not today", "user": "ann"},
            headers=bearer(ADMIN),
        )
        assert r.status_code == 202
    approval = next(e for e in events_of(served, thread["id"]) if e["type"] == "approval")
    source = approval["source"]
    assert (source["user"], source["person"], source["by"]) == ("ann", "ann", "admin token")
    assert source["auth"] == "admin-token" and source["admin"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": f"Bearer {ADMIN}x"},
        {"Authorization": "Bearer tb_00000000_forged"},
    ],
)
def test_without_a_valid_credential_nothing_is_read_or_written(
    served: ServerProcess, headers: dict[str, str]
) -> None:
    assert httpx.get(served.url + "/threads", headers=headers).status_code == 401
    r = httpx.post(served.url + "/threads", json={"text": "hi"}, headers=headers)
    assert r.status_code == 401 and "error" in r.json()
    assert httpx.get(served.url + "/threads", headers=bearer(ADMIN)).json() == []


def test_scopes_expiry_and_revocation(
    served: ServerProcess, people_env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    reader = token_for(people_env, "ann", "--scope", "read")
    answerer = token_for(people_env, "ann", "--scope", "answer")
    short = token_for(people_env, "ann", "--expires", "1s")
    with httpx.Client(base_url=served.url, timeout=10) as c:
        assert c.get("/threads", headers=bearer(reader)).status_code == 200
        r = c.post("/threads", json={"text": "hi"}, headers=bearer(reader))
        assert r.status_code == 403 and "scope" in r.json()["error"]
        thread = waiting_deploy(c, fake_openai, bearer(answerer))
        r = c.post(
            f"/threads/{thread['id']}/approvals", json={"approved": True}, headers=bearer(answerer)
        )
        assert r.status_code == 403 and "scope" in r.json()["error"]
        r = c.post(f"/threads/{thread['id']}/fork", json={"at": 0}, headers=bearer(answerer))
        assert r.status_code == 403
        time.sleep(1.1)
        assert c.get("/threads", headers=bearer(short)).status_code == 401
        listed = cli(people_env, "tokens", "list")
        assert listed.returncode == 0 and "expired" in listed.stdout
        token_id = answerer.split("_")[1]
        assert cli(people_env, "tokens", "revoke", token_id).returncode == 0
        assert c.get("/threads", headers=bearer(answerer)).status_code == 401
        assert "revoked" in cli(people_env, "tokens", "list").stdout
        again = cli(people_env, "tokens", "revoke", token_id)
        assert again.returncode == 1 and "no valid token" in again.stderr


def test_tokens_name_people_of_the_people_file(people_env: dict[str, str]) -> None:
    done = cli(people_env, "tokens", "create", "--person", "mallory")
    assert done.returncode == 1 and "not in" in done.stderr
    done = cli(people_env, "tokens", "create", "--person", "ann", "--expires", "soon")
    assert done.returncode == 1 and "not a duration" in done.stderr


def test_people_see_only_their_threads(
    served: ServerProcess, people_env: dict[str, str], fake_openai: FakeOpenAI
) -> None:
    ann = token_for(people_env, "ann")
    bob = token_for(people_env, "bob")
    with httpx.Client(base_url=served.url, timeout=10) as c:
        fake_openai.add(text("Hi Bob."))
        bobs = c.post("/threads", json={"text": "hi"}, headers=bearer(bob)).json()["id"]
        wait_as_admin(served.url, bobs, "done")
        deploy = waiting_deploy(c, fake_openai, bearer(bob))
        # Ann sees the approval she may decide, not Bob's chat.
        listed = {t["id"] for t in c.get("/threads", headers=bearer(ann)).json()}
        assert listed == {deploy["id"]}
        assert c.get(f"/threads/{bobs}", headers=bearer(ann)).status_code == 403
        r = c.post(f"/threads/{bobs}/messages", json={"text": "boo"}, headers=bearer(ann))
        assert r.status_code == 403
        view = c.get(f"/threads/{deploy['id']}", headers=bearer(ann)).json()
        assert view["pending"]["allowed"] is True
        view = c.get(f"/threads/{deploy['id']}", headers=bearer(bob)).json()
        assert view["pending"]["allowed"] is False


def test_a_wrong_token_with_a_huge_body_is_refused_before_the_body(
    served: ServerProcess,
) -> None:
    """401, not 413 or 422: authentication comes before the body is read."""
    host, port = "127.0.0.1", served.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST /threads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n{"
        )
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 401"), answer


def test_serving_beyond_loopback_needs_a_token_or_people(
    tmp_path: Path, people_env: dict[str, str]
) -> None:
    env = {k: v for k, v in people_env.items() if k not in ("THREADBOT_API_TOKEN",)}
    env.pop("THREADBOT_PEOPLE")
    env["THREADBOT_HTTP"] = "0.0.0.0:0"
    done = serve_refused(env)
    assert done.returncode == 1 and "refusing to serve" in done.stderr
    assert os.environ.get("THREADBOT_API_TOKEN") is None
