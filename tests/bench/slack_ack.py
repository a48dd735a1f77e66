"""What installing into several workspaces adds to Slack's wait for an
acknowledgement.

Two real `threadbot serve` processes run side by side against the local fake
of Slack's Web API: one with a workspace's bot token, one installed into two
workspaces by the OAuth flow (the installations in its SQLite file). Each
gets the same signed events, alternating between the servers: a message in a
channel conversation that is not for threadbot, so a request is Slack's
signature check, Bolt's authorization (with OAuth: the workspace's
installation read from the database) and one route lookup. Timed from before
the request is written to after its response is read, over one kept-alive
connection per server.

    python -m tests.bench.slack_ack [--requests 500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from ..fakes import FakeOpenAI, ServerProcess, free_port
from ..slack_fake import SECRET, FakeSlack, SlackSender, signed_headers
from ..test_http import env_for
from .__main__ import _pct


def _event(team: str, n: int) -> tuple[str, dict[str, str]]:
    body, _ = SlackSender("").signed_event(
        {
            "type": "message",
            "user": "U1",
            "text": "lunch?",
            "ts": f"1950000{n:06d}.000100",
            "channel": "CNOTFORUS",
            "channel_type": "channel",
        }
    )
    payload = json.loads(body)
    payload["team_id"] = team
    payload["authorizations"] = [{"team_id": team, "user_id": "UBOT", "is_bot": True}]
    body = json.dumps(payload)
    return body, {"Content-Type": "application/json", **signed_headers(body)}


def run(requests: int) -> dict[str, dict[str, float]]:
    with (
        FakeSlack().serve() as slack,
        FakeOpenAI().serve() as model,
        tempfile.TemporaryDirectory() as tmp,
    ):
        work = Path(tmp)
        (work / "ledger.txt").touch()
        slack_env = {"SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.api_url}
        token = ServerProcess(
            {
                **env_for(work / "token.db", model, work / "ledger.txt"),
                **slack_env,
                "SLACK_BOT_TOKEN": "xoxb-test",
            }
        ).start()
        port = free_port()
        oauth = ServerProcess(
            {
                **env_for(work / "oauth.db", model, work / "ledger.txt"),
                **slack_env,
                "SLACK_CLIENT_ID": "client-1",
                "SLACK_CLIENT_SECRET": "client-secret",
                "SLACK_OAUTH_AUTHORIZE_URL": slack.install_url,
                "SLACK_REDIRECT_URI": f"http://127.0.0.1:{port}/slack/oauth_redirect",
                "SLACK_TEAMS": "T1,T2",
            },
            port,
        ).start()
        try:
            for team in ("T1", "T2"):
                slack.installing = team
                r = httpx.get(oauth.url + "/slack/install")
                state_cookie = r.headers["set-cookie"].split(";")[0]
                r = httpx.get(r.headers["location"])  # Slack's page sends the browser back
                r = httpx.get(r.headers["location"], headers={"Cookie": state_cookie})
                assert r.status_code == 200, r.text
            times: dict[str, list[float]] = {"bot token": [], "OAuth, 2 workspaces": []}
            n = itertools.count()
            with (
                httpx.Client(base_url=token.url) as to_token,
                httpx.Client(base_url=oauth.url) as to_oauth,
            ):
                for i in range(requests + 20):
                    for name, client, team in (
                        ("bot token", to_token, "T1"),
                        ("OAuth, 2 workspaces", to_oauth, ("T1", "T2")[i % 2]),
                    ):
                        body, headers = _event(team, next(n))
                        start = time.perf_counter()
                        r = client.post("/slack/events", content=body, headers=headers)
                        took = time.perf_counter() - start
                        assert r.status_code == 200, r.text
                        if i >= 20:  # the first ones warm up connections and caches
                            times[name].append(took)
        finally:
            token.stop()
            oauth.stop()
    return {
        name: {
            "p50_ms": statistics.median(t) * 1000,
            "p99_ms": _pct(t, 0.99) * 1000,
            "max_ms": max(t) * 1000,
        }
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    figures = run(args.requests)
    print(f"{'Slack event acknowledged':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, f in figures.items():
        print(f"{name:<26}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}{f['max_ms']:>9.2f}")
    print(json.dumps({"requests": args.requests, "figures": figures}))


if __name__ == "__main__":
    main()
