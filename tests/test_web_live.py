"""The web page follows threads instead of asking again: in a real browser
(headless Chromium, see test_web.py), against threadbot's HTTP stack on
uvicorn with a model that writes its reply word by word and holds back the
last word until the test lets it go."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, expect

from bot.model import ask, say

from .sse_tools import GatedModel, LiveServer
from .test_browser_attacks import AttackerSite
from .test_http import wait_status
from .test_web import chromium

QUIET = 10_000
"""Milliseconds an idle page is watched for requests."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def model() -> GatedModel:
    return GatedModel()


@pytest.fixture
def server(tmp_path: Path, model: GatedModel) -> Iterator[LiveServer]:
    # Heartbeats every second: an idle page hears them, and asks nothing.
    with LiveServer(tmp_path / "t.db", model, heartbeat=1.0) as s:
        yield s


def requests_of(page: Page) -> list[str]:
    sent: list[str] = []

    def seen(r: Request) -> None:
        sent.append(f"{r.method} {r.url}")

    page.on("request", seen)
    return sent


def test_the_reply_appears_as_it_is_written(
    page: Page, server: LiveServer, model: GatedModel
) -> None:
    model.add(ask("Which service?"), say("The api runs 1.4.2 on every host."))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "which version runs?"}).json()["id"]
        wait_status(c, thread_id, "waiting_for_human")
        page.goto(f"{server.url}/ui/threads/{thread_id}")
        expect(page.locator("#status")).to_have_text("Live")
        page.get_by_label("Your answer").fill("the api")
        page.get_by_role("button", name="Send answer").click()

        writing = page.locator("#writing")
        expect(writing).to_contain_text("threadbot is writing…")
        expect(writing).to_contain_text("The api runs 1.4.2 on every")
        expect(page.locator("#doing")).to_have_text("threadbot is thinking…")
        # Nothing of the reply is stored yet: the page shows it as it is written.
        assert "host." not in writing.inner_text()
        assert c.get(f"/threads/{thread_id}").json()["status"] == "running"
        expect(page.locator("li.assistant_message:not(.writing)")).to_have_count(0)

        model.gate.set()
        stored = page.locator("li.assistant_message:not(.writing)")
        expect(stored).to_have_count(1)
        expect(stored).to_contain_text("The api runs 1.4.2 on every host.")
        expect(writing).to_have_count(0)
        expect(page.locator("#doing")).to_be_hidden()
        expect(page.locator("#state")).to_have_text("Done")


def test_an_idle_thread_page_asks_nothing_and_events_still_arrive(
    page: Page, server: LiveServer, model: GatedModel
) -> None:
    model.gate.set()
    model.add(ask("Which region?"))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "pick a region"}).json()["id"]
        wait_status(c, thread_id, "waiting_for_human")
        page.goto(f"{server.url}/ui/threads/{thread_id}")
        expect(page.get_by_role("heading", name="The agent asks")).to_be_visible()
        expect(page.locator("#status")).to_have_text("Live")
        sent = requests_of(page)
        page.wait_for_timeout(QUIET)
        assert sent == [], sent
        assert server.open_streams() == (1, 1)  # one stream, one watch

        # Someone answers elsewhere: the page hears it, and reads what the
        # thread waits for again once.
        model.add(say("Going with eu-west."))
        c.post(f"/threads/{thread_id}/responses", json={"text": "eu-west"})
        expect(page.locator("#timeline")).to_contain_text("Going with eu-west.")
        expect(page.locator("#state")).to_have_text("Done")
        expect(page.get_by_role("heading", name="The agent asks")).to_have_count(0)
    reads = [r for r in sent if r.endswith(f"/threads/{thread_id}")]
    assert reads and len(reads) == len(sent), sent
    assert len(reads) <= 3, sent


def test_the_inbox_moves_a_thread_the_moment_its_status_changes(
    page: Page, server: LiveServer, model: GatedModel
) -> None:
    model.gate.set()
    model.add(ask("Colour?"), say("Blue it is."))
    page.goto(server.url + "/")
    expect(page.locator("#inbox")).to_have_text("No threads yet.")
    sent = requests_of(page)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "a colour"}).json()["id"]
        waiting = page.get_by_role("region", name="Waiting for an answer (1)")
        expect(waiting.locator(f"li[data-thread='{thread_id}']")).to_contain_text("Colour?")
        c.post(f"/threads/{thread_id}/responses", json={"text": "blue"})
        done = page.get_by_role("region", name="Done (1)")
        expect(done.locator(f"li[data-thread='{thread_id}']")).to_be_visible()
        expect(waiting).to_have_count(0)
    page.wait_for_timeout(QUIET)
    assert sent == [], sent

    # A filter starts another listing; what changes after it still moves.
    page.select_option("#filter", "done")
    expect(page.get_by_role("region", name="Done (1)")).to_be_visible()
    model.add(ask("Again?"))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        c.post(f"/threads/{thread_id}/messages", json={"text": "once more"})
    expect(page.locator("#inbox")).to_have_text("No threads yet.")
    assert [r for r in sent if "/threads/events" in r] == [
        f"GET {server.url}/threads/events?status=done&order=due&limit=500"
    ]


def test_a_page_on_another_site_cannot_follow_a_thread(
    page: Page, server: LiveServer, model: GatedModel
) -> None:
    """An EventSource (with credentials) and a fetch from a page on another
    origin of this machine: refused before a stream is opened, and nothing
    of the thread reaches the page."""
    model.gate.set()
    model.add(say("secret plans"))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        thread_id = c.post("/threads", json={"text": "the plans"}).json()["id"]
        wait_status(c, thread_id, "done")
    target = f"{server.url}/threads/{thread_id}/events"
    attacker = AttackerSite()
    attacker.pages["/follow.html"] = f"""<!doctype html><script>
const got = [];
const source = new EventSource({json.dumps(target)}, {{withCredentials: true}});
for (const type of ["user_message", "assistant_message", "message"])
  source.addEventListener(type, (e) => got.push(e.data));
source.onerror = () => {{ document.body.dataset.failed = "yes"; source.close(); }};
fetch({json.dumps(target)}, {{headers: {{Accept: "text/event-stream"}}, credentials: "include"}})
  .then((r) => r.text()).then((t) => got.push(t), () => {{ document.body.dataset.fetch = "no"; }});
window.got = got;
</script>"""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url))
    try:
        page.goto(attacker.url + "/follow.html")
        expect(page.locator("body")).to_have_attribute("data-failed", "yes")
        expect(page.locator("body")).to_have_attribute("data-fetch", "no")
        assert page.evaluate("window.got") == []
    finally:
        attacker.close()
    # Both asked; neither was let as far as opening a stream.
    assert [url for url in sent if url == target] == [target] * 2, sent
    assert server.admitted == 0
