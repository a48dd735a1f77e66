"""MCP servers as tools inside `threadbot serve`: the test's MCP server over
stdio and over streamable HTTP on 127.0.0.1, its `charge` tool approved with
a button in the fake Slack, run once; a SIGKILL of serve while it runs leaves
the call "outcome unknown" after the restart, never run twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .fakes import FakeOpenAI, ServerProcess, calls, clean_environ, free_port, text
from .slack_fake import SECRET, FakeSlack, SlackSender
from .test_http import env_for, wait_status
from .test_slack import mention, posts, thread_of

REPO = Path(__file__).resolve().parent.parent
MCP_SERVER = str(REPO / "tests" / "mcp_server.py")


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack().serve() as fake:
        yield fake


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the MCP server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, "the MCP server did not listen"
            time.sleep(0.05)


@pytest.fixture(params=["stdio", "http"])
def mcp_config(request: pytest.FixtureRequest, tmp_path: Path, ledger: Path) -> Iterator[Path]:
    """An mcpServers file naming the test's server, whose `charge` needs
    ULEAD's approval and takes a minute once it has charged."""
    env = {"THREADBOT_TEST_LEDGER": str(ledger), "THREADBOT_TEST_SLOW": "60"}
    options = {"tools": {"charge": {"requires_approval": True, "approvers": ["ULEAD"]}}}
    proc: subprocess.Popen[bytes] | None = None
    if request.param == "stdio":
        server: dict[str, Any] = {"command": sys.executable, "args": [MCP_SERVER], "env": env}
    else:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, MCP_SERVER, "http", str(port)],
            env={**clean_environ(), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, proc)
        server = {"url": f"http://127.0.0.1:{port}/mcp"}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"ops": {**server, **options}}}))
    yield path
    if proc is not None:
        proc.kill()
        proc.wait(10)
    # A stdio server outlives a SIGKILLed serve until its call ends: stop it.
    for line in ledger.read_text().splitlines():
        if line.startswith("started pid="):
            pid = int(line.split("=")[1])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_approved_in_slack_runs_once_and_a_kill_leaves_it_unknown(
    mcp_config: Path, slack: FakeSlack, fake_openai: FakeOpenAI, db_path: Path, ledger: Path
) -> None:
    env = env_for(db_path, fake_openai, ledger)
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        THREADBOT_SLACK_APPROVERS="UOPS",
        THREADBOT_MCP=str(mcp_config),
    )
    server = ServerProcess(env).start()
    assert "  mcp:    ops (" in server.output()
    assert "6 tools" in server.output()
    channel = f"C_MCP_{db_path.parent.name[-12:]}"
    fake_openai.add(calls(("ops__charge", {"amount": 42, "reason": "invoice 7"})))
    SlackSender(server.url).event(mention(channel, "charge 42 for invoice 7"))
    post = posts(slack, channel, 1)[0]
    request = post["blocks"][0]["text"]["text"]
    assert "Approval needed" in request and "ops__charge" in request
    assert "<@ULEAD>" in json.dumps(post["blocks"])  # the tool's approver, not the default
    thread = thread_of(server, "waiting_for_approval")
    ts = next(e for e in thread["events"] if e["type"] == "delivered")["refs"]["ts"]
    msg = {"ts": ts, "blocks": post["blocks"]}
    # Someone else's click does nothing.
    SlackSender(server.url).click("UOPS", msg, channel, "tb_approve")
    assert "may not" in slack.wait_for("chat.postEphemeral")[-1]["text"]
    assert "charge" not in ledger.read_text()

    assert SlackSender(server.url).click("ULEAD", msg, channel, "tb_approve").status_code == 200
    deadline = time.monotonic() + 20
    while "charge 42" not in ledger.read_text():  # the side effect happened...
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.02)
    with httpx.Client(base_url=server.url) as c:
        events = c.get(f"/threads/{thread['id']}").json()["events"]
    assert [e["type"] for e in events][-1] == "tool_started"  # ...and no result yet
    server.kill()

    fake_openai.add(text("The charge may or may not have gone through; please check."))
    restarted = ServerProcess(env, port=server.port).start()
    try:
        assert "resumed 1 running thread" in restarted.output()
        with httpx.Client(base_url=restarted.url) as c:
            body = wait_status(c, thread["id"], "done")
        posts(slack, channel, 2)
    finally:
        restarted.stop()
    result = next(e for e in body["events"] if e["type"] == "tool_result")
    assert result["is_error"] is True
    assert "interrupted, outcome unknown" in result["output"]
    assert ledger.read_text().count("charge 42") == 1
    assert "outcome unknown" in fake_openai.requests[-1]["messages"][-1]["content"]
