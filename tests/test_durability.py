"""Faults and races across processes and channels: nothing lost, nothing run
twice, nobody answers a question twice."""

from __future__ import annotations

import json
import smtplib
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from .fakes import FakeOpenAI, ServerProcess, ask, calls, free_port, text
from .mail_fake import CaptureRelay
from .slack_fake import BOT_USER, SECRET, FakeSlack, SlackSender
from .test_http import env_for, wait_status


def _wait(url: str, thread_id: str, *statuses: str) -> dict[str, Any]:
    with httpx.Client(base_url=url) as client:
        return wait_status(client, thread_id, *statuses)


def slack_env(slack: FakeSlack, **extra: str) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        **extra,
    }


def test_a_post_that_went_out_before_a_crash_is_not_posted_again(tmp_path: Path) -> None:
    with FakeSlack().serve() as slack, FakeOpenAI().serve() as model:
        env = {**env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt"), **slack_env(slack)}
        server = ServerProcess(env).start()
        # Slack takes the post, and the bot dies before it hears back.
        slack.on_post = lambda args: server.proc.kill()
        model.add(ask("Which version?"))
        SlackSender(server.url).event(
            {
                "type": "app_mention",
                "user": "U1",
                "channel": "C1",
                "ts": "1.000100",
                "text": f"<@{BOT_USER}> deploy",
            }
        )
        slack.wait_for("chat.postMessage")
        server.proc.wait(10)
        server.close()
        slack.on_post = None
        restarted = ServerProcess(env, port=server.port).start()
        try:
            listed = httpx.get(restarted.url + "/threads").json()
            body = _wait(restarted.url, listed[0]["id"], "waiting_for_human")
            deadline = time.monotonic() + 10
            while body["events"][-1]["type"] != "delivered":
                assert time.monotonic() < deadline, restarted.output()
                time.sleep(0.05)
                body = httpx.get(restarted.url + f"/threads/{listed[0]['id']}").json()
        finally:
            restarted.stop()
        posts = slack.called("chat.postMessage")
        assert len(posts) == 1  # found in the Slack thread, recorded, not posted twice
        assert body["events"][-1]["refs"]["ts"] == posts[0]["_ts"]
        assert slack.called("conversations.replies")


def test_two_servers_on_one_database_never_run_a_thread_at_once(tmp_path: Path) -> None:
    """Both serve the same file; threads launched and answered through either
    run in one place at a time, and every tool runs once."""
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    n = 12
    with FakeOpenAI().serve() as model:

        def brain(body: dict[str, Any]) -> dict[str, Any]:
            last = body["messages"][-1]
            if last["role"] == "user":
                return calls(("slow_charge", {"amount": int(last["content"].split()[-1])}))
            if last["role"] == "tool" and last["content"].startswith("charged"):
                return ask("Anything else?")
            return text("bye")

        model.add(*[brain] * (3 * n))
        env = env_for(tmp_path / "t.db", model, ledger, THREADBOT_TEST_SLOW="0.3")
        a = ServerProcess(env).start()
        b = ServerProcess({**env, "THREADBOT_SMTP": f"127.0.0.1:{free_port()}"}).start()
        try:
            ids = []
            for i in range(n):
                url = (a if i % 2 else b).url
                ids.append(httpx.post(url + "/threads", json={"text": f"charge {i}"}).json()["id"])
            for i, thread_id in enumerate(ids):
                body = _wait(a.url, thread_id, "waiting_for_human")
                call_id = body["pending"]["call_id"]
                # Answer through the other server than the one that launched it.
                url = (b if i % 2 else a).url
                r = httpx.post(
                    url + f"/threads/{thread_id}/responses", json={"text": "no", "call_id": call_id}
                )
                assert r.status_code == 202
            for thread_id in ids:
                body = _wait(b.url, thread_id, "done")
                types = [e["type"] for e in body["events"]]
                assert types.count("tool_started") == 1 and types.count("tool_result") == 1
        finally:
            a.stop()
            b.stop()
    charges = ledger.read_text().splitlines()
    assert sorted(int(line.split()[1]) for line in charges) == list(range(n))  # each once


def test_answers_racing_through_http_slack_and_mail_record_one(tmp_path: Path) -> None:
    with (
        FakeSlack().serve() as slack,
        FakeOpenAI().serve() as model,
        CaptureRelay().serve() as relay,
    ):
        smtp_port = free_port()
        env = {
            **env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt"),
            **slack_env(slack, THREADBOT_SLACK_APPROVERS="U1"),
            "THREADBOT_SMTP": f"127.0.0.1:{smtp_port}",
            "THREADBOT_EMAIL": "bot@example.com",
            "THREADBOT_SMTP_RELAY": f"127.0.0.1:{relay.port}",
            "THREADBOT_SECRET": "s",
        }
        server = ServerProcess(env).start()
        try:
            model.add(ask("Which one?", ["blue", "green"]), text("ok"))
            start = EmailMessage()
            start["From"], start["To"], start["Subject"] = (
                "ann@example.com",
                "bot@example.com",
                "pick",
            )
            start["Message-ID"] = "<start@client>"
            start.set_content("pick a colour")
            with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
                smtp.send_message(start)
            question = relay.wait_for(1)[0].message
            thread_id = httpx.get(server.url + "/threads").json()[0]["id"]
            call_id = _wait(server.url, thread_id, "waiting_for_human")["pending"]["call_id"]

            results: dict[str, Any] = {}
            barrier = threading.Barrier(7)

            def via_http(i: int) -> None:
                barrier.wait()
                r = httpx.post(
                    server.url + f"/threads/{thread_id}/responses",
                    json={"text": f"http {i}", "call_id": call_id, "user": f"op{i}"},
                )
                results[f"http{i}"] = (r.status_code, r.json())

            def via_slack() -> None:
                value = json.dumps({"t": thread_id, "c": call_id, "i": 0})
                message = {
                    "ts": "9.1",
                    "blocks": [
                        {
                            "type": "actions",
                            "elements": [{"action_id": "tb_option_0", "value": value}],
                        }
                    ],
                }
                barrier.wait()
                results["slack"] = (
                    SlackSender(server.url).click("U1", message, "C9", "tb_option_0").status_code
                )

            def via_mail() -> None:
                reply = EmailMessage()
                reply["From"], reply["To"], reply["Subject"] = (
                    "ann@example.com",
                    question["Reply-To"],
                    "Re: pick",
                )
                reply["Message-ID"], reply["In-Reply-To"] = "<reply@client>", question["Message-ID"]
                reply.set_content("green")
                barrier.wait()
                try:
                    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
                        smtp.send_message(reply)
                    results["mail"] = 250
                except smtplib.SMTPDataError as e:
                    results["mail"] = (e.smtp_code, e.smtp_error.decode())

            workers = [threading.Thread(target=via_http, args=(i,)) for i in range(5)]
            workers += [threading.Thread(target=via_slack), threading.Thread(target=via_mail)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(20)
            body = _wait(server.url, thread_id, "done")
            answers = [e for e in body["events"] if e["type"] == "human_response"]
            assert len(answers) == 1
            winner = answers[0]["source"]
            # Everyone else was told who answered.
            http_losers = [v for k, v in results.items() if k.startswith("http") and v[0] != 202]
            assert all(code == 409 and data["by"] for code, data in http_losers)
            won_by_http = len(http_losers) == 4
            won_by_mail = results["mail"] == 250
            won_by_slack = winner["channel"] == "slack"
            assert [won_by_http, won_by_mail, won_by_slack].count(True) == 1, (results, winner)
            if not won_by_mail:
                assert results["mail"][0] == 550 and "already settled" in results["mail"][1]
            if not won_by_slack:
                told = slack.wait_for("chat.postEphemeral")
                assert any("Already settled by" in t["text"] for t in told)
        finally:
            server.stop()


def test_sigterm_lets_a_running_tool_finish_and_records_its_result(tmp_path: Path) -> None:
    """SIGTERM is a stop, not a crash: the tool that is running finishes
    within the grace period and its result is stored, so nothing is left
    "interrupted, outcome unknown" for the next start."""
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    with FakeOpenAI().serve() as model:
        model.add(calls(("slow_charge", {"amount": 7})), text("charged"))
        env = env_for(tmp_path / "t.db", model, ledger, THREADBOT_TEST_SLOW="2")
        server = ServerProcess(env).start()
        thread_id = httpx.post(server.url + "/threads", json={"text": "charge 7"}).json()["id"]
        deadline = time.monotonic() + 10
        while not ledger.read_text():  # the tool has started
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.02)
        server.proc.terminate()
        assert server.proc.wait(20) == 0, server.output()
        assert "letting active threads pause" in server.output()
        server.close()
        restarted = ServerProcess(env, port=server.port).start()
        try:
            body = _wait(restarted.url, thread_id, "done")
        finally:
            restarted.stop()
    results = [e for e in body["events"] if e["type"] == "tool_result"]
    assert [r["output"] for r in results] == ["charged 7"]
    assert ledger.read_text().count("charge 7") == 1
