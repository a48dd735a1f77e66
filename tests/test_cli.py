"""The `threadbot` command, run as a user runs it: on the database alone, and
beside a running server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from .fakes import REPO, FakeOpenAI, ServerProcess, ask, calls, clean_environ, free_port, text
from .test_http import env_for


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadbot", *args],
        cwd=REPO,
        env={**clean_environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def thread_id_of(out: str) -> str:
    found = re.search(r"thread ([0-9a-f]{16}):", out)
    assert found, out
    return found.group(1)


def test_launch_reply_approve_show_without_a_server(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    # Nothing listens here, so the CLI works on the database itself.
    env = env_for(db_path, fake_openai, ledger, THREADBOT_HTTP=f"127.0.0.1:{free_port()}")
    fake_openai.add(
        ask("Which version?"),
        calls(("deploy", {"service": "api", "version": "1.4.2"})),
        text("Deployed api 1.4.2."),
    )
    out = cli(env, "launch", "deploy the api")
    assert out.returncode == 0, out.stderr
    thread_id = thread_id_of(out.stdout)
    assert "waiting_for_human" in out.stdout
    assert "Which version?" in out.stdout
    assert f'threadbot reply {thread_id} "..."' in out.stdout

    out = cli(env, "reply", thread_id, "1.4.2")
    assert out.returncode == 0, out.stderr
    assert "waiting_for_approval" in out.stdout
    assert f"threadbot approve {thread_id}" in out.stdout

    out = cli(env, "approve", thread_id)
    assert out.returncode == 0, out.stderr
    assert f"thread {thread_id}: done" in out.stdout
    assert "Deployed api 1.4.2." in out.stdout
    assert ledger.read_text().startswith("deploy api 1.4.2 ")

    out = cli(env, "show", thread_id, "--format", "json")
    body = json.loads(out.stdout)
    assert body["status"] == "done"
    assert [e["type"] for e in body["events"]][-3:] == [
        "tool_started",
        "tool_result",
        "assistant_message",
    ]
    md = cli(env, "show", thread_id).stdout
    assert md.startswith("# deploy the api")

    listed = cli(env, "threads", "--status", "done").stdout
    assert thread_id in listed
    assert cli(env, "threads", "--status", "failed").stdout.strip() == "no threads"

    fork = cli(env, "fork", thread_id, "--at", "1")
    assert fork.returncode == 0, fork.stderr
    assert "waiting_for_human" in fork.stdout
    assert thread_id_of(fork.stdout) != thread_id

    late = cli(env, "reply", thread_id, "again")
    assert late.returncode == 1
    assert "not waiting for an answer" in late.stderr
    missing = cli(env, "show", "nope")
    assert missing.returncode == 1
    assert "no thread 'nope'" in missing.stderr


def test_reject_with_a_comment(db_path: Path, fake_openai: FakeOpenAI, ledger: Path) -> None:
    env = env_for(db_path, fake_openai, ledger, THREADBOT_HTTP=f"127.0.0.1:{free_port()}")
    fake_openai.add(calls(("deploy", {"service": "api", "version": "9"})), text("Not deployed."))
    thread_id = thread_id_of(cli(env, "launch", "deploy api 9").stdout)
    out = cli(env, "reject", thread_id, "--comment", "version 9 is not released")
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    assert "version 9 is not released" in fake_openai.requests[-1]["messages"][-1]["content"]
    assert ledger.read_text() == ""


def test_respond_and_cancel_without_a_server(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    env = env_for(db_path, fake_openai, ledger, THREADBOT_HTTP=f"127.0.0.1:{free_port()}")
    fake_openai.add(calls(("deploy", {"service": "api", "version": "9"})), text("Staging it is."))
    thread_id = thread_id_of(cli(env, "launch", "deploy api 9").stdout)
    out = cli(env, "respond", thread_id, "try staging first")
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout and ledger.read_text() == ""
    assert "try staging first" in fake_openai.requests[-1]["messages"][-1]["content"]
    fake_openai.add(ask("Which version?"))
    out = cli(env, "send", thread_id, "deploy it after all")
    assert "Which version?" in out.stdout
    out = cli(env, "cancel", thread_id, "--reason", "not today")
    assert out.returncode == 0, out.stderr
    assert "cancelled" in out.stdout
    out = cli(env, "cancel", thread_id)
    assert out.returncode != 0 and "nothing to cancel" in out.stderr


def test_commands_go_to_a_running_server(
    db_path: Path, fake_openai: FakeOpenAI, ledger: Path
) -> None:
    server = ServerProcess(env_for(db_path, fake_openai, ledger)).start()
    try:
        # This shell has no model settings: the server's model answers.
        env = {
            "THREADBOT_HTTP": f"127.0.0.1:{server.port}",
            "THREADBOT_DB": str(db_path.parent / "elsewhere.db"),
            "OPENAI_BASE_URL": "",
            "OPENAI_API_KEY": "",
        }
        fake_openai.add(ask("Which version?"), text("Deployed from the server."))
        out = cli(env, "launch", "deploy the api")
        assert out.returncode == 0, out.stderr
        thread_id = thread_id_of(out.stdout)
        assert "Which version?" in out.stdout
        out = cli(env, "reply", thread_id, "1.4.2")
        assert "Deployed from the server." in out.stdout, out.stdout + out.stderr
        assert (
            json.loads(cli(env, "show", thread_id, "--format", "json").stdout)["status"] == "done"
        )
        assert not (db_path.parent / "elsewhere.db").exists()
    finally:
        server.stop()


def test_demo_model_without_settings(tmp_path: Path) -> None:
    env = {
        "THREADBOT_DB": str(tmp_path / "demo.db"),
        "THREADBOT_HTTP": f"127.0.0.1:{free_port()}",
        "OPENAI_BASE_URL": "",
        "OPENAI_API_KEY": "",
        "THREADBOT_TOOLS": "",
        "THREADBOT_MODEL": "",
    }
    out = cli(env, "launch", "deploy the api")
    thread_id = thread_id_of(out.stdout)
    assert "Which version of api should I deploy?" in out.stdout
    out = cli(env, "reply", thread_id, "1.4.2")
    assert "deploy" in out.stdout and "waiting_for_approval" in out.stdout
    out = cli(env, "approve", thread_id)
    assert "(demo model) Done: deployed api 1.4.2" in out.stdout
