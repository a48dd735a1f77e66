"""The web page in a real browser: headless Chromium (the system's, from
Debian's packages) driven by Playwright, against `threadbot serve`."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .fakes import REPO, FakeOpenAI, ServerProcess, ask, calls, text
from .test_http import env_for, wait_status

OUTPUT = REPO / "test-output"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def chromium(*extra_args: str) -> Iterator[Browser]:
    """The system's Chromium, headless, quiet (nothing of its own goes out)."""
    assert CHROMIUM, "the browser tests need Chromium: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                *extra_args,
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(model: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("web")
    (d / "ledger.txt").touch()
    s = ServerProcess(env_for(d / "t.db", model, d / "ledger.txt")).start()
    yield s
    s.stop()


def launch(server: ServerProcess, prompt: str, status: str) -> dict[str, Any]:
    thread_id = httpx.post(server.url + "/threads", json={"text": prompt}).json()["id"]
    with httpx.Client(base_url=server.url) as c:
        return wait_status(c, thread_id, status)


def test_inbox_to_answer_to_done(page: Page, server: ServerProcess, model: FakeOpenAI) -> None:
    model.add(ask("Which version of the api?", ["1.4.2", "1.5.0"]), text("Deployed **1.4.2**."))
    thread = launch(server, "deploy the api from the web", "waiting_for_human")
    page.goto(server.url + "/")
    waiting = page.get_by_role("region", name="Waiting for an answer (1)")
    expect(waiting).to_be_visible()
    row = waiting.locator(f"li[data-thread='{thread['id']}']")
    expect(row).to_contain_text("Waits for an answer: Which version of the api?")
    expect(row).to_contain_text("from http")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "inbox.png"), full_page=True)

    row.get_by_role("link", name="deploy the api from the web").click()
    expect(page.get_by_role("heading", name="The agent asks")).to_be_visible()
    # No people file, on loopback: whoever opens the page is the local operator.
    expect(page.locator("#me")).to_have_text("local operator (loopback, no sign-in)")
    page.get_by_role("group", name="Options").get_by_role("button", name="1.4.2").click()
    expect(page.locator("#state")).to_have_text("Done")
    expect(page.locator("#timeline")).to_contain_text("local operator via operator answered")
    expect(page.locator("#timeline")).to_contain_text("Deployed **1.4.2**.")
    page.screenshot(path=str(OUTPUT / "thread.png"), full_page=True)
    body = httpx.get(server.url + f"/threads/{thread['id']}").json()
    answer = next(e for e in body["events"] if e["type"] == "human_response")
    assert (answer["text"], answer["source"]["auth"]) == ("1.4.2", "operator")


def test_approve_and_reject(page: Page, server: ServerProcess, model: FakeOpenAI) -> None:
    model.add(calls(("deploy", {"service": "api", "version": "2"})), text("Deployed 2."))
    thread = launch(server, "deploy 2 from the web", "waiting_for_approval")
    page.goto(server.url + f"/ui/threads/{thread['id']}")
    expect(page.get_by_role("heading", name="Approve deploy?")).to_be_visible()
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#state")).to_have_text("Done")
    expect(page.locator("#timeline")).to_contain_text("approved by local operator via operator")

    model.add(calls(("deploy", {"service": "api", "version": "3"})), text("Not deployed."))
    thread = launch(server, "deploy 3 from the web", "waiting_for_approval")
    page.goto(server.url + f"/ui/threads/{thread['id']}")
    page.get_by_role("button", name="Reject…").click()
    page.get_by_role("button", name="Reject with this reason").click()
    expect(page.get_by_role("alert")).to_contain_text("Say why")  # a reason is required
    page.get_by_label("Why reject? The agent reads this.").fill("version 3 is not signed")
    page.get_by_role("button", name="Reject with this reason").click()
    expect(page.locator("#state")).to_have_text("Done")
    expect(page.locator("#timeline")).to_contain_text("rejected by local operator via operator")
    assert "version 3 is not signed" in model.requests[-1]["messages"][-1]["content"]


def test_a_second_tab_is_told_who_answered(
    browser: Browser, server: ServerProcess, model: FakeOpenAI
) -> None:
    model.add(ask("Which colour?"), text("Blue it is."))
    thread = launch(server, "pick a colour", "waiting_for_human")
    url = server.url + f"/ui/threads/{thread['id']}"
    context = browser.new_context()
    first, second = context.new_page(), context.new_page()
    try:
        for p in (first, second):
            p.goto(url)
            expect(p.get_by_label("Your answer")).to_be_visible()
        # The second tab goes to the background and stops refreshing: stale.
        second.evaluate("Object.defineProperty(document, 'hidden', {value: true})")
        second.get_by_label("Your answer").fill("red")
        first.get_by_label("Your answer").fill("blue")
        first.get_by_role("button", name="Send answer").click()
        expect(first.locator("#state")).to_have_text("Done")
        second.get_by_role("button", name="Send answer").click()
        expect(second.get_by_role("alert")).to_contain_text("already settled")
        expect(second.get_by_role("alert")).to_contain_text("local operator")
    finally:
        context.close()
    body = httpx.get(server.url + f"/threads/{thread['id']}").json()
    assert [e["text"] for e in body["events"] if e["type"] == "human_response"] == ["blue"]


def test_fork_from_an_event(page: Page, server: ServerProcess, model: FakeOpenAI) -> None:
    model.add(ask("Which region?"))
    thread = launch(server, "fork me", "waiting_for_human")
    page.goto(server.url + f"/ui/threads/{thread['id']}")
    model.add(ask("Which region, again?"))  # the fork runs on from its first event
    page.get_by_role("button", name="Fork a new thread from event 0").click()
    page.wait_for_url(lambda u: thread["id"] not in u)
    expect(page.locator("#state")).to_have_text("Waiting for an answer")
    expect(page.locator("#ev-0")).to_contain_text("fork me")
    expect(page.locator("#ev-1")).to_contain_text("Which region, again?")
    fork_id = page.url.rsplit("/", 1)[-1]
    listed = {t["id"]: t for t in httpx.get(server.url + "/threads").json()}
    assert listed[fork_id]["parent_id"] == thread["id"]


def test_a_token_is_asked_for(browser: Browser, model: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / "ledger.txt").touch()
    env = env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt", THREADBOT_API_TOKEN="s3cret")
    s = ServerProcess(env).start()
    context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
    try:
        model.add(text("hi"))
        httpx.post(
            s.url + "/threads",
            json={"text": "with a token"},
            headers={"Authorization": "Bearer s3cret"},
        )
        p = context.new_page()
        p.goto(s.url + "/")
        expect(p.get_by_label("This server needs its API token")).to_be_visible()
        p.get_by_label("This server needs its API token").fill("wrong")
        p.get_by_role("button", name="Use it").click()
        expect(p.get_by_label("This server needs its API token")).to_be_visible()  # asked again
        p.get_by_label("This server needs its API token").fill("s3cret")
        p.get_by_role("button", name="Use it").click()
        expect(p.get_by_role("link", name="with a token")).to_be_visible()
        width = p.evaluate("document.documentElement.scrollWidth")
        assert width <= 390  # no sideways scrolling on a narrow screen
    finally:
        context.close()
        s.stop()


def test_several_waiting_calls_with_countdowns_reply_instead_and_cancel(
    browser: Browser, model: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "ledger.txt").touch()
    env = env_for(tmp_path / "t.db", model, tmp_path / "ledger.txt", THREADBOT_DEADLINE="2h")
    s = ServerProcess(env).start()
    page = browser.new_page()
    try:
        model.add(
            calls(
                ("deploy", {"service": "api", "version": "7"}),
                ("deploy", {"service": "web", "version": "7"}),
            ),
            text("api deployed; web waits for staging."),
        )
        thread = launch(s, "deploy 7 everywhere", "waiting_for_approval")
        page.goto(s.url + f"/ui/threads/{thread['id']}")
        cards = page.locator("#pending .card")
        expect(cards).to_have_count(2)
        expect(cards.nth(0)).to_contain_text('"service": "api"')
        expect(cards.nth(1)).to_contain_text('"service": "web"')
        countdown = cards.nth(0).locator("time.deadline")
        expect(countdown).to_have_text(re.compile(r"^Decide in 1 h 59 min$|^Decide in 2 h 0 min$"))
        # The second first: it gets a reply instead of a decision.
        cards.nth(1).get_by_role("button", name="Reply instead…").click()
        cards.nth(1).get_by_label(re.compile("Your reply")).fill("stage web first")
        cards.nth(1).get_by_role("button", name="Send reply").click()
        expect(cards).to_have_count(1)
        cards.nth(0).get_by_role("button", name="Approve").click()
        expect(page.locator("#state")).to_have_text("Done")
        expect(page.locator("#timeline")).to_contain_text("replied instead of deciding")
        assert "stage web first" in model.requests[-1]["messages"][-1]["content"]

        model.add(calls(("deploy", {"service": "db", "version": "8"})))
        thread = launch(s, "deploy the db", "waiting_for_approval")
        page.goto(s.url + "/?status=waiting_for_approval")
        row = page.locator(f"li[data-thread='{thread['id']}']")
        expect(row.locator("time.due")).to_contain_text("in 1 h 59 min")
        page.goto(s.url + f"/ui/threads/{thread['id']}")
        page.get_by_text("Cancel this thread…").click()
        page.get_by_label("Why (optional)").fill("wrong database")
        page.get_by_role("button", name="Cancel thread").click()
        expect(page.locator("#state")).to_have_text("Cancelled")
        expect(page.locator("#timeline")).to_contain_text("wrong database")
        expect(page.locator("#pending .card")).to_have_count(0)
    finally:
        page.close()
        s.stop()
