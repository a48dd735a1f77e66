"""Attacks on the operator's browser, in a real one: pages of another origin
that the operator happens to open, trying to approve a call waiting in
`threadbot serve` (no token, on loopback, as it runs by default). Headless
system Chromium driven by Playwright; the attacker's pages are served from
another port of 127.0.0.1, or, for DNS rebinding, by Playwright itself under
a name Chromium resolves to 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from .fakes import FakeOpenAI, ServerProcess, calls
from .test_http import env_for, wait_status
from .test_web import chromium

EDITED = {"approved": True, "arguments": {"service": "api", "version": "666"}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium(
        # The attacker's name now resolves to this machine.
        "--host-resolver-rules=MAP evil.test 127.0.0.1",
        # Chromium's own refusal of public pages reaching loopback would
        # stop the rebinding test before threadbot is asked; other
        # browsers have none, and the server must not rely on it.
        "--disable-features=LocalNetworkAccessChecks",
    ) as b:
        yield b


@pytest.fixture(scope="module")
def server(model: FakeOpenAI, workdir: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(env_for(workdir / "t.db", model, workdir / "ledger.txt")).start()
    yield s
    s.stop()


class AttackerSite:
    """Another origin on this machine: 127.0.0.1 on a port of its own."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                page = site.pages.get(self.path)
                data = (page or "not here").encode()
                self.send_response(200 if page else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def attacker() -> Iterator[AttackerSite]:
    site = AttackerSite()
    yield site
    site.close()


@pytest.fixture
def waiting(server: ServerProcess, model: FakeOpenAI, workdir: Path) -> dict[str, Any]:
    (workdir / "ledger.txt").write_text("")
    model.add(calls(("deploy", {"service": "api", "version": "2"})))
    with httpx.Client(base_url=server.url) as c:
        thread_id = c.post("/threads", json={"text": "deploy api 2"}).json()["id"]
        return wait_status(c, thread_id, "waiting_for_approval")


def assert_untouched(server: ServerProcess, thread: dict[str, Any], workdir: Path) -> None:
    time.sleep(0.3)  # an approval that got through would be running the tool by now
    now = httpx.get(f"{server.url}/threads/{thread['id']}").json()
    assert now["status"] == "waiting_for_approval"
    assert len(now["events"]) == len(thread["events"])
    assert (workdir / "ledger.txt").read_text() == ""


def test_another_origin_cannot_post_an_approval(
    page: Page,
    server: ServerProcess,
    attacker: AttackerSite,
    waiting: dict[str, Any],
    workdir: Path,
) -> None:
    """A `no-cors` fetch and a text/plain form: the two ways a page can post
    a JSON-looking body to another origin without asking it first."""
    target = f"{server.url}/threads/{waiting['id']}/approvals"
    # A text/plain form sends `name=value`: the name opens the JSON, the value closes it.
    name, value = json.dumps(EDITED)[:-1] + ', "x": "', '"}'
    attacker.pages["/attack.html"] = f"""<!doctype html>
<form id="f" method="post" enctype="text/plain" action="{target}">
<input type="hidden" name='{name}' value='{value}'></form>
<script>
fetch({json.dumps(target)}, {{method: "POST", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: {json.dumps(json.dumps(EDITED))}}})
  .then(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script>"""
    page.goto(attacker.url + "/attack.html")
    page.wait_for_url(target)  # the form was posted: its answer is now the page
    refusal = json.loads(page.locator("body").inner_text())
    assert set(refusal) == {"error"}
    assert_untouched(server, waiting, workdir)


def test_a_rebound_name_reaches_nothing(
    page: Page, server: ServerProcess, waiting: dict[str, Any], workdir: Path
) -> None:
    """DNS rebinding: evil.test served the attacker's page, then came to
    resolve to 127.0.0.1, so the page's own origin now reaches threadbot."""
    origin = f"http://evil.test:{server.port}"
    script = f"""
const out = {{}};
async function attack() {{
  let ids = [{json.dumps(waiting["id"])}];
  try {{
    const r = await fetch("/threads?status=waiting_for_approval");
    out.list = {{status: r.status, body: await r.text()}};
    if (r.ok) ids = ids.concat(JSON.parse(out.list.body).map((t) => t.id));
  }} catch (e) {{ out.list = {{failed: String(e)}}; }}
  out.approvals = [];
  for (const id of ids) {{
    try {{
      const r = await fetch(`/threads/${{id}}/approvals`, {{method: "POST",
        headers: {{"Content-Type": "application/json"}}, body: {json.dumps(json.dumps(EDITED))}}});
      out.approvals.push(r.status);
    }} catch (e) {{ out.approvals.push(String(e)); }}
  }}
  return out;
}}"""

    def before_the_rebinding(route: Route) -> None:
        html = f"<!doctype html><title>cats</title><script>{script}</script>"
        route.fulfill(status=200, content_type="text/html", body=html)

    page.route(f"{origin}/attack.html", before_the_rebinding)
    page.goto(f"{origin}/attack.html")
    out = page.evaluate("attack()")
    assert out["list"].get("status") == 400, out  # threadbot answered, and said nothing
    assert waiting["id"] not in json.dumps(out["list"])
    assert out["approvals"] == [400], out
    assert_untouched(server, waiting, workdir)


def test_the_thread_page_cannot_be_framed(
    browser: Browser,
    page: Page,
    server: ServerProcess,
    attacker: AttackerSite,
    waiting: dict[str, Any],
    workdir: Path,
) -> None:
    """Clickjacking: the attacker frames the Approve button under something
    worth clicking."""
    thread_page = f"{server.url}/ui/threads/{waiting['id']}"
    # Where the button is when the page is shown on its own, as in the frame.
    own = browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        alone = own.new_page()
        alone.goto(thread_page)
        box = alone.get_by_role("button", name="Approve").bounding_box()
        assert box is not None
    finally:
        own.close()
    attacker.pages["/win.html"] = f"""<!doctype html>
<style>body {{ margin: 0 }} iframe {{ border: 0; opacity: 0.01 }}</style>
<iframe src="{thread_page}" width="1000" height="800"></iframe>"""
    page.goto(attacker.url + "/win.html")
    frame = page.frame_locator("iframe")
    page.wait_for_timeout(1000)  # time for the frame's page to load and render its buttons
    expect(frame.get_by_role("button", name="Approve")).to_have_count(0)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert_untouched(server, waiting, workdir)
