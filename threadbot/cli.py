"""`threadbot`: serve, and work with threads from a shell.

Commands other than `serve` talk to the running server when there is one at
THREADBOT_HTTP (so the server's model and channels do the work); with no
server they open the database and run the agent in this process until the
thread pauses.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.errors import ThreadbotError, UsageError
from store import StoreError
from store.credentials import SCOPES

from .config import Settings

__all__ = ["main"]


class Remote:
    """The HTTP API of a running server."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/")
        self.token = token

    @classmethod
    def find(cls, settings: Settings) -> Remote | None:
        host, port = settings.host_port()
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        remote = cls(
            f"http://{host}:{port}", os.environ.get("THREADBOT_TOKEN") or settings.api_token
        )
        try:
            answer = remote.call("GET", "/healthz", timeout=0.5)
        except (OSError, ThreadbotError):
            return None
        return remote if isinstance(answer, dict) and answer.get("app") == "threadbot" else None

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise ThreadbotError(f"{e.code}: {message}") from None
        return json.loads(raw) if "json" in kind else raw.decode()


def _print_state(view: dict[str, Any], *, since: int = 0) -> None:
    """New events in brief, then what the thread waits for and how to answer."""
    from bot.render import event_line

    for e in view["events"][since:]:
        line = event_line(e)
        if line:
            print(line)
    thread_id, status, pending = view["id"], view["status"], view["pending"]
    print(f"\nthread {thread_id}: {status}")
    if pending is None:
        return
    if pending["kind"] == "question":
        print(f"  question: {pending['question']}")
        if pending.get("options"):
            print(f"  options:  {', '.join(pending['options'])}")
        print(f'  answer:   threadbot reply {thread_id} "..."')
    elif pending["kind"] == "approval":
        print(f"  approval: {pending['tool']} {json.dumps(pending['arguments'])}")
        print(f"  decide:   threadbot approve {thread_id}")
        print(f'            threadbot reject {thread_id} --comment "why"')
    else:
        print(f"  waiting for the result of {pending['tool']} ({pending['call_id']})")
        print(f"  post it:  threadbot result {thread_id} {pending['call_id']} '<json>'")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threadbot", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--db",
        help="SQLite file or postgresql:// URL (THREADBOT_DB, default ./threadbot.db)",
    )
    p.add_argument("--http", help="host:port of the server (THREADBOT_HTTP)")
    p.add_argument("--tools", help="tools module or .py file (THREADBOT_TOOLS)")
    p.add_argument("--model", help="model name, or 'demo' (THREADBOT_MODEL)")
    p.add_argument(
        "--local", action="store_true", help="work on the database even if a server runs"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the bot: HTTP API and channels")
    s = sub.add_parser(
        "mcp", help="be an MCP server on stdio: ask_human, request_approval, get_answer"
    )
    s.add_argument("--person", help="who the MCP client acts for (the people file's id)")
    s = sub.add_parser("launch", help="start a thread")
    s.add_argument("text")
    s = sub.add_parser("reply", help="answer the question a thread asks")
    s.add_argument("id")
    s.add_argument("text")
    s.add_argument("--call-id")
    s = sub.add_parser("approve", help="approve the call a thread waits on")
    s.add_argument("id")
    s.add_argument("--comment")
    s.add_argument("--call-id")
    s = sub.add_parser("reject", help="reject the call a thread waits on; the model reads why")
    s.add_argument("id")
    s.add_argument("--comment", required=True)
    s.add_argument("--call-id")
    s = sub.add_parser(
        "respond", help="answer a call waiting for approval instead of deciding: it does not run"
    )
    s.add_argument("id")
    s.add_argument("text")
    s.add_argument("--call-id")
    s = sub.add_parser("cancel", help="stop a thread, whatever it waits for")
    s.add_argument("id")
    s.add_argument("--reason")
    s = sub.add_parser("result", help="post a deferred call's result (JSON or text)")
    s.add_argument("id")
    s.add_argument("call_id")
    s.add_argument("output")
    s.add_argument("--error", action="store_true", help="the result is an error")
    s = sub.add_parser("send", help="continue a thread with a new message")
    s.add_argument("id")
    s.add_argument("text")
    s = sub.add_parser("show", help="print a thread")
    s.add_argument("id")
    s.add_argument("--format", choices=("md", "json"), default="md")
    s = sub.add_parser("threads", help="list threads")
    s.add_argument("--status")
    s.add_argument("--overdue", action="store_true", help="only those waiting past their reminder")
    s.add_argument("--limit", type=int, default=50)
    sub.add_parser("reindex", help="rebuild the thread list from the events")
    tokens = sub.add_parser("tokens", help="API tokens of people: create, list, revoke")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    s = tsub.add_parser("create", help="print a new token for a person (shown once)")
    s.add_argument("--person", required=True, help="who the token acts as (the people file's id)")
    s.add_argument("--scope", choices=SCOPES, default="approve")
    s.add_argument("--expires", help="lifetime: 3600, 90m, 12h, 90d; never if unset")
    tsub.add_parser("list", help="every token: id, person, scope, expiry, revoked")
    s = tsub.add_parser("revoke", help="revoke a token by its id")
    s.add_argument("id")
    hooks = sub.add_parser("webhooks", help="webhooks sent: every attempt, and what waits")
    hsub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    s = hsub.add_parser("log", help="the latest attempts, newest first, then those still to send")
    s.add_argument("--thread", help="only this thread's webhooks")
    s.add_argument("--limit", type=_at_least_one, default=50, help="how many of each to show")
    s = sub.add_parser(
        "migrate", help="copy every thread into another database (SQLite to PostgreSQL, say)"
    )
    s.add_argument("--from", dest="source", help="the database copied (default: --db)")
    s.add_argument("--to", dest="target", required=True, help="an empty database: path or URL")
    s = sub.add_parser("fork", help="copy a thread up to an event into a new thread")
    s.add_argument("id")
    s.add_argument("--at", type=int, required=True)
    return p


def _output(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP call a command makes."""
    c = args.command
    # The local operator and the admin token act for the shell's user, and
    # the thread records both; a person's own token is that person.
    user = {} if os.environ.get("THREADBOT_TOKEN") else {"user": getpass.getuser()}
    if c == "launch":
        return "POST", "/threads", {"text": args.text, **user}
    if c == "reply":
        return (
            "POST",
            f"/threads/{args.id}/responses",
            {"text": args.text, "call_id": args.call_id, **user},
        )
    if c in ("approve", "reject"):
        return (
            "POST",
            f"/threads/{args.id}/approvals",
            {"approved": c == "approve", "comment": args.comment, "call_id": args.call_id, **user},
        )
    if c == "respond":
        return (
            "POST",
            f"/threads/{args.id}/approvals",
            {"respond": args.text, "call_id": args.call_id, **user},
        )
    if c == "cancel":
        return "POST", f"/threads/{args.id}/cancel", {"reason": args.reason, **user}
    if c == "result":
        return (
            "POST",
            f"/threads/{args.id}/results",
            {
                "call_id": args.call_id,
                "output": _output(args.output),
                "is_error": args.error,
                **user,
            },
        )
    if c == "send":
        return "POST", f"/threads/{args.id}/messages", {"text": args.text, **user}
    if c == "fork":
        return "POST", f"/threads/{args.id}/fork", {"at": args.at}
    raise AssertionError(c)


def _remote(remote: Remote, args: argparse.Namespace) -> None:
    c = args.command
    if c == "show":
        path = f"/threads/{args.id}" + ("/markdown" if args.format == "md" else "")
        out = remote.call("GET", path)
        print(out if isinstance(out, str) else json.dumps(out, indent=2), end="")
        return
    if c == "threads":
        query = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
        query += "&overdue=true&order=due" if args.overdue else ""
        _print_threads(remote.call("GET", "/threads" + query))
        return
    method, path, body = _request(args)
    answer = remote.call(method, path, body)
    thread_id = answer.get("id") or answer.get("thread_id")
    since = 0 if c in ("launch", "fork") else int(answer.get("seq", 0))
    deadline = time.monotonic() + 120
    view = remote.call("GET", f"/threads/{thread_id}")
    while view["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        view = remote.call("GET", f"/threads/{thread_id}")
    _print_state(view, since=since)


def _print_threads(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("no threads")
    for r in rows:
        print(f"{r['id']}  {r['status']:<21} {r['updated_at'][:19]}  {r['title']}")


async def _local(settings: Settings, args: argparse.Namespace) -> None:
    from bot.events import Source

    from .serve import build_bot, start_mcp

    bot = build_bot(settings)
    src = Source(channel="cli", user=getpass.getuser(), auth="cli", admin=True)
    try:
        c = args.command
        if c == "show":
            view = bot.get(args.id)
            if args.format == "md":
                print(view.markdown(), end="")
            else:
                print(json.dumps(view.json(), indent=2))
            return
        if c == "reindex":
            print(f"{bot.reindex()} thread(s) corrected")
            return
        if c == "threads":
            rows = bot.threads(
                status=args.status,
                limit=args.limit,
                overdue_by=time.time() if args.overdue else None,
                due_first=args.overdue,
            )
            _print_threads([dataclasses.asdict(r) for r in rows])
            return
        since = 0
        # The thread may go on here, through a tool of an MCP server.
        await start_mcp(settings, bot)
        if c == "launch":
            thread_id = await bot.launch(args.text, source=src)
        elif c == "fork":
            thread_id = await bot.fork(args.id, args.at)
        else:
            thread_id = args.id
            if c == "reply":
                receipt = await bot.respond(thread_id, args.text, call_id=args.call_id, source=src)
            elif c in ("approve", "reject"):
                receipt = await bot.decide(
                    thread_id,
                    c == "approve",
                    comment=args.comment,
                    call_id=args.call_id,
                    source=src,
                )
            elif c == "respond":
                receipt = await bot.decide(
                    thread_id, False, respond=args.text, call_id=args.call_id, source=src
                )
            elif c == "cancel":
                receipt = await bot.cancel(thread_id, args.reason, source=src)
            elif c == "result":
                receipt = await bot.post_result(
                    thread_id, args.call_id, _output(args.output), is_error=args.error, source=src
                )
            else:
                receipt = await bot.send(thread_id, args.text, source=src)
            since = receipt.seq
        await bot.settle(thread_id)
        _print_state(bot.get(thread_id).json(), since=since)
    finally:
        await bot.close()
        bot.store.close()


def _tokens(settings: Settings, args: argparse.Namespace) -> None:
    """Tokens are kept in the database: whoever can open it is the operator."""
    from bot.durations import seconds
    from store import Credentials, open_store

    from .serve import build_people

    store = open_store(settings.db)
    try:
        credentials = Credentials(store)
        if args.tokens_command == "create":
            people = build_people(settings)
            if people.persons and people.find(args.person) is None:
                raise UsageError(
                    f"{args.person!r} is not in the people file {settings.people_file}"
                )
            found = people.find(args.person)
            expires = time.time() + seconds(args.expires) if args.expires else None
            token_id, token = credentials.create_token(
                found.id if found else args.person, args.scope, expires
            )
            print(token)
            print(
                f"token {token_id} for {args.person} ({args.scope}): shown once, keep it safe",
                file=sys.stderr,
            )
        elif args.tokens_command == "list":
            now = time.time()
            for t in credentials.tokens():
                state = "revoked" if t.revoked_at else ("valid" if t.valid(now) else "expired")
                until = _iso(t.expires_at) if t.expires_at else "never"
                print(f"{t.id}  {t.person:<16} {t.scope:<8} expires {until:<20} {state}")
        elif not credentials.revoke(args.id):
            raise UsageError(f"no valid token {args.id!r}")
        else:
            print(f"token {args.id} revoked")
    finally:
        store.close()


def _at_least_one(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {n}")
    return n


def _webhooks(settings: Settings, args: argparse.Namespace) -> None:
    """The delivery log, read from the database (as `tokens` is). URLs are
    shown by their origin: a path may hold a token."""
    from bot.webhooks import shown
    from store import Outbox, is_postgres_url, open_store

    if not is_postgres_url(settings.db) and not Path(settings.db).is_file():
        raise UsageError(f"--db {settings.db}: no such database file")
    store = open_store(settings.db)
    try:
        outbox = Outbox(store)
        attempts = outbox.attempts(limit=args.limit, thread_id=args.thread)
        for a in attempts:
            result = str(a.status) if a.status is not None else "-"
            error = f"  {a.error}" if a.error and a.status is None else ""
            print(
                f"{_iso(a.at)}  {a.id}  {a.type:<16} #{a.attempt:<2} {result:>3} "
                f"{a.duration * 1000:6.0f} ms  {a.state:<9} {shown(a.url)}{error}"
            )
        waiting = [d for d in outbox.pending() if args.thread in (None, d.thread_id)]
        for d in waiting[: args.limit]:
            print(f"pending  {d.id}  {d.type:<16} next try {_iso(d.next_at)}  {shown(d.url)}")
        if len(waiting) > args.limit:
            print(f"… and {len(waiting) - args.limit} more pending")
        if not attempts and not waiting:
            print("no webhooks")
    finally:
        store.close()


def _migrate(source_db: str, target_db: str) -> None:
    """Stop the servers on the source first: what they append meanwhile is
    not copied."""
    from store import StoreError, is_postgres_url, open_store
    from store.copy import copy_store

    if source_db == target_db:
        raise UsageError("--from and --to name the same database")
    if not is_postgres_url(source_db) and not Path(source_db).is_file():
        raise UsageError(f"--from {source_db}: no such database file")
    source = open_store(source_db)
    try:
        target = open_store(target_db)
        try:
            report = copy_store(source, target)
        except StoreError as e:
            raise UsageError(str(e)) from e
        finally:
            target.close()
    finally:
        source.close()
    for table, count in report.rows.items():
        print(f"{table:<14} {count:>9} rows")
    print("copied and checked: the same rows on both sides, every thread's events identical")


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(db=args.db, http=args.http, tools=args.tools, model=args.model)
        if args.command == "serve":
            from .serve import run_serve

            run_serve(settings)
            return 0
        if args.command == "mcp":
            from .mcp_stdio import run_mcp_stdio

            asyncio.run(run_mcp_stdio(settings, args.person))
            return 0
        if args.command == "tokens":
            _tokens(settings, args)
            return 0
        if args.command == "webhooks":
            _webhooks(settings, args)
            return 0
        if args.command == "migrate":
            _migrate(args.source or settings.db, args.target)
            return 0
        local_only = args.local or args.command == "reindex"
        remote = None if local_only else Remote.find(settings)
        if remote is not None:
            _remote(remote, args)
        else:
            asyncio.run(_local(settings, args))
    except (ThreadbotError, StoreError) as e:
        print(f"threadbot: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
