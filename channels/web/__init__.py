"""The web page: an inbox of threads and a thread's timeline, answerable in place.

Plain HTML pages with a little JavaScript that reads and writes through the
same HTTP API as every other client (so the same rules hold: a stale page
cannot answer twice, and with a token set the page asks for it). The pages
follow the API's event streams rather than asking again on a timer: the
inbox moves a thread the moment its status changes, and a thread's page
shows the reply as the model writes it. No build step and no CDN: the
machine that serves it may have no internet.
"""

from __future__ import annotations

from html import escape
from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

__all__ = ["OPEN_PATHS", "mount"]

OPEN_PATHS = ("/", "/ui/app.css", "/ui/app.js")
"""Served without the API token: they hold no data, and the page asks who
you are (sign-in or token) before it reads any."""

_STATIC = files(__package__) / "static"


def _page(title: str, body: str, script_data: str = "") -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · threadbot</title>
<link rel="stylesheet" href="/ui/app.css">
</head>
<body{script_data}>
<header class="top">
  <a class="brand" href="/">threadbot</a>
  <p id="me" class="who" aria-live="polite"></p>
</header>
<section id="sign-in" class="sign-in" hidden aria-labelledby="sign-in-title">
  <h1 id="sign-in-title">Sign in</h1>
  <form id="email-form" hidden>
    <label for="email">Your email address</label>
    <input id="email" type="email" autocomplete="email" required>
    <button type="submit" class="primary">Email me a sign-in link</button>
  </form>
  <p id="email-sent" role="status" hidden></p>
  <p><a id="slack-sign-in" href="/auth/slack" hidden>Sign in with Slack</a></p>
  <p><button id="use-token" type="button">I have an API token</button></p>
</section>
<main id="main">{body}</main>
<div id="token-dialog" class="token" hidden>
  <form id="token-form">
    <label for="token">This server needs its API token</label>
    <input id="token" type="password" autocomplete="off" required>
    <button type="submit">Use it</button>
  </form>
</div>
<p id="status" class="status" role="status" aria-live="polite"></p>
<script src="/ui/app.js"></script>
</body>
</html>
"""


def mount(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def inbox() -> HTMLResponse:
        body = """
<h1>Threads</h1>
<div class="filters">
  <label for="filter">Show</label>
  <select id="filter">
    <option value="">all</option>
    <option value="overdue">overdue</option>
    <option value="waiting_for_approval">waiting for approval</option>
    <option value="waiting_for_human">waiting for an answer</option>
    <option value="waiting_for_result">waiting for a result</option>
    <option value="running">running</option>
    <option value="failed">failed</option>
    <option value="cancelled">cancelled</option>
    <option value="done">done</option>
  </select>
</div>
<div id="inbox" aria-live="polite"><p class="muted">Loading…</p></div>
"""
        return HTMLResponse(_page("Threads", body, ' data-page="inbox"'))

    @app.get("/ui/threads/{thread_id}", response_class=HTMLResponse, include_in_schema=False)
    async def thread(thread_id: str) -> HTMLResponse:
        body = f"""
<nav class="crumbs"><a href="/">← all threads</a></nav>
<h1 id="title">Thread</h1>
<p class="meta"><span id="state" class="badge"></span>
  <a id="md-link" href="/threads/{escape(thread_id)}/markdown">Markdown</a>
  <a id="json-link" href="/threads/{escape(thread_id)}">JSON</a></p>
<section id="pending" aria-live="polite"></section>
<ol id="timeline" class="timeline"></ol>
<p id="doing" class="doing" aria-live="polite" hidden></p>
"""
        data = f' data-page="thread" data-thread="{escape(thread_id)}"'
        return HTMLResponse(_page("Thread", body, data))

    @app.get("/ui/app.css", include_in_schema=False)
    async def css() -> Response:
        return Response((_STATIC / "app.css").read_text(), media_type="text/css")

    @app.get("/ui/app.js", include_in_schema=False)
    async def js() -> Response:
        return Response(
            (_STATIC / "app.js").read_text(), media_type="text/javascript; charset=utf-8"
        )
