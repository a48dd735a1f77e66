"""A local stand-in for the Slack Web API, and signed requests to the bot."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

BOT_USER = "UBOT"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    auth: str = ""
    """The Authorization header it came with."""

    @property
    def token(self) -> str:
        return self.auth.removeprefix("Bearer ")


@dataclass
class FakeSlack:
    """Records every Web API call; answers like Slack. `fail[method]` holds
    statuses to answer with first (e.g. [429])."""

    calls: list[Call] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    users: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The workspace's directory, as the test sets it: user id → (real
    name, email). Users not in it are unknown to users.info."""
    enterprise: str | None = None
    """The Enterprise Grid organization of the bot token's workspace, as
    auth.test says it (None: no organization)."""
    grid: dict[str, str] = field(default_factory=dict)
    """Members of Enterprise Grid organizations: user id → organization id.
    users.info knows them (with `enterprise_user`) from any workspace."""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def called(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c.args for c in self.calls if c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.called(method)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{method} called {len(found)} times, wanted {count}: {self.calls}"
                )
            time.sleep(0.02)

    def answer(
        self, method: str, args: dict[str, Any], auth: str = ""
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            queued = self.fail.get(method)
            if queued:
                status = queued.pop(0)
                return status, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
            ts = f"1700000{next(self._ts):03d}.000100"
            args["_ts"] = ts
            self.calls.append(Call(method, args, auth))
        installs = self._installs(method, args, auth)
        if installs is not None:
            return 200, installs, {}
        if method == "auth.test":
            return (
                200,
                {
                    "ok": True,
                    "user_id": BOT_USER,
                    "bot_id": "BBOT",
                    "team_id": "T1",
                    "user": "threadbot",
                    **({"enterprise_id": self.enterprise} if self.enterprise else {}),
                },
                {},
            )
        if method == "chat.postMessage":
            if self.on_post is not None:
                self.on_post(args)
            return (
                200,
                {"ok": True, "channel": args.get("channel"), "ts": ts, "message": {"ts": ts}},
                {},
            )
        if method == "conversations.replies":
            with self.lock:
                posted = [
                    c.args
                    for c in self.calls
                    if c.method == "chat.postMessage"
                    and c.args.get("channel") == args.get("channel")
                    and c.args.get("thread_ts") == args.get("ts")
                ]
            messages = [
                {"ts": p["_ts"], "text": p.get("text"), "metadata": p.get("metadata")}
                for p in posted
            ] + self.streamed(str(args.get("channel")), str(args.get("ts")))
            return 200, {"ok": True, "messages": messages, "has_more": False}, {}
        if method in LIVE_METHODS:
            return self._live(method, args, ts)
        if method == "conversations.open":
            # One direct message per user, named after them.
            users = str(args.get("users", ""))
            if not users or "," in users:
                return 200, {"ok": False, "error": "not_implemented"}, {}
            return 200, {"ok": True, "channel": {"id": "D" + users}}, {}
        if method == "conversations.history":
            with self.lock:
                posted = [
                    c.args
                    for c in self.calls
                    if c.method == "chat.postMessage"
                    and c.args.get("channel") == args.get("channel")
                    and not c.args.get("thread_ts")
                ]
            messages = [
                {"ts": p["_ts"], "text": p.get("text"), "metadata": p.get("metadata")}
                for p in reversed(posted)  # newest first, as Slack lists them
            ]
            return 200, {"ok": True, "messages": messages, "has_more": False}, {}
        if method == "views.open":
            view = args.get("view") or {}
            return 200, {"ok": True, "view": {**view, "id": f"V{ts.split('.')[0]}"}}, {}
        if method in ("users.info", "users.lookupByEmail"):
            return self._directory(method, args, self._users_of(auth))
        if method == "apps.connections.open":
            return 200, {"ok": True, "url": self.socket_url}, {}
        if method == "openid.connect.token":
            return 200, self._oidc_token(args), {}
        if method == "openid.connect.userInfo":
            with self.lock:
                user = self.oidc_tokens.get(str(args.get("_token", "")))
            if user is None:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            return 200, {"ok": True, **user}, {}
        return 200, {"ok": True}, {}

    def _users_of(self, auth: str) -> dict[str, tuple[str, str]]:
        """The directory the token's workspace sees: its own, where the test
        gave it one (`directories`), else `users`."""
        with self.lock:
            found = self.workspaces.get(auth.removeprefix("Bearer "))
            if found is not None and found[0] in self.directories:
                return self.directories[found[0]]
        return self.users

    def _directory(
        self, method: str, args: dict[str, Any], users: dict[str, tuple[str, str]]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "users.info":
            uid = args.get("user")
            found = users.get(uid) if isinstance(uid, str) else None
            error = "user_not_found"
            with self.lock:
                org = self.grid.get(uid) if isinstance(uid, str) else None
            if org is not None:
                name = found[0] if found else str(uid)
                user = {"id": uid, "name": str(uid).lower(), "real_name": name}
                user["enterprise_user"] = {"id": uid, "enterprise_id": org}
                return 200, {"ok": True, "user": user}, {}
        else:
            email = str(args.get("email", "")).lower()
            uid = next((u for u, (_, e) in users.items() if e.lower() == email), None)
            found = users.get(uid) if uid else None
            error = "users_not_found"
        if found is None:
            return 200, {"ok": False, "error": error}, {}
        name, email = found
        user = {
            "id": uid,
            "name": name.split()[0].lower(),
            "real_name": name,
            "profile": {"real_name": name, "email": email},
        }
        return 200, {"ok": True, "user": user}, {}

    # -- Sign in with Slack (OpenID Connect) ---------------------------------------

    oidc_users: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Slack user id → what openid.connect.userInfo says about them."""
    oidc_user: str = ""
    """Who signs in at the authorize page next (Slack asks the browser's user)."""
    oidc_codes: dict[str, tuple[str, str]] = field(default_factory=dict)
    oidc_tokens: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def authorize_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openid/connect/authorize"

    def issue_code(self, user: str, nonce: str = "") -> str:
        """A code as Slack's authorize page hands out after the user consents."""
        code = "code-" + secrets.token_hex(8)
        with self.lock:
            self.oidc_codes[code] = (user, nonce)
        return code

    def _oidc_token(self, args: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            found = self.oidc_codes.pop(str(args.get("code", "")), None)  # single use
            if found is None or not str(args.get("_auth", "")).startswith("Basic "):
                return {"ok": False, "error": "invalid_code"}
            user, nonce = found
            token = "xoxp-" + secrets.token_hex(8)
            info = {"https://slack.com/user_id": user, **self.oidc_users.get(user, {})}
            self.oidc_tokens[token] = info
        claims = {"sub": user, "nonce": nonce, "email": info.get("email")}
        return {
            "ok": True,
            "access_token": token,
            "token_type": "Bearer",
            "id_token": ".".join(
                base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                for part in ({"alg": "none"}, claims, "")
            ),
        }

    # -- Installing into several workspaces (OAuth v2) -----------------------------

    oauth_client: tuple[str, str] = ("client-1", "client-secret")
    """The app's client id and secret, as Slack knows them."""
    installing: str = "T1"
    """The workspace whose admin approves the install at the authorize page next."""
    install_codes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """A code Slack handed out → (team, the redirect URL it was asked with)."""
    workspaces: dict[str, tuple[str, str]] = field(default_factory=dict)
    """An installed workspace's bot token → (team id, bot user id)."""
    directories: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    """A workspace's own directory (team id → user id → (real name, email)),
    as the test sets it: its token's users.info and users.lookupByEmail see
    that one only."""

    @property
    def install_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/v2/authorize"

    def issue_install_code(self, team: str, redirect_uri: str = "") -> str:
        """A code as Slack's authorize page hands out once an admin approves."""
        code = f"install-{team}-" + secrets.token_hex(6)
        with self.lock:
            self.install_codes[code] = (team, redirect_uri)
        return code

    def calls_with(self, token: str, method: str | None = None) -> list[Call]:
        """The calls made with a bot token (of one method)."""
        with self.lock:
            return [c for c in self.calls if c.token == token and method in (None, c.method)]

    def token_of(self, team: str) -> str:
        with self.lock:
            return next(t for t, (found, _) in self.workspaces.items() if found == team)

    def _installs(self, method: str, args: dict[str, Any], auth: str) -> dict[str, Any] | None:
        """oauth.v2.access: a code (once, with the app's credentials and the
        redirect URL it was issued for) → a bot token of its workspace;
        auth.test per installed workspace's token. None: not for this block."""
        if method == "auth.test":
            with self.lock:
                found = self.workspaces.get(auth.removeprefix("Bearer "))
            if found is None:
                return None
            team, bot_user = found
            return {"ok": True, "team_id": team, "user_id": bot_user, "bot_id": "B" + team}
        if method != "oauth.v2.access":
            return None
        basic = base64.b64encode(":".join(self.oauth_client).encode()).decode()
        with self.lock:
            issued = self.install_codes.pop(str(args.get("code", "")), None)  # single use
        if auth != f"Basic {basic}":
            return {"ok": False, "error": "invalid_client"}
        if issued is None:
            return {"ok": False, "error": "invalid_code"}
        team, redirect_uri = issued
        if redirect_uri and args.get("redirect_uri") != redirect_uri:
            return {"ok": False, "error": "bad_redirect_uri"}
        token = f"xoxb-{team}-" + secrets.token_hex(6)
        with self.lock:
            self.workspaces[token] = (team, "UBOT" + team)
        return {
            "ok": True,
            "app_id": "A1",
            "authed_user": {"id": "UADMIN"},
            "scope": "chat:write,im:write",
            "token_type": "bot",
            "access_token": token,
            "bot_user_id": "UBOT" + team,
            "team": {"id": team, "name": f"Workspace {team}"},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    # -- streaming replies and assistant threads -----------------------------------

    refuse_streaming: str | None = None
    """An error to answer chat.startStream with (e.g. "not_allowed"): Slack
    without streaming for this workspace or kind of conversation."""
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """ts → the streamed message: channel, thread_ts, text so far, whether it
    is still streaming, and its metadata once stopped."""

    def _live(
        self, method: str, args: dict[str, Any], ts: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "chat.startStream":
            if self.refuse_streaming:
                return 200, {"ok": False, "error": self.refuse_streaming}, {}
            if len(str(args.get("markdown_text") or "")) > MARKDOWN_TEXT_LIMIT:
                return 200, {"ok": False, "error": "msg_too_long"}, {}
            if not str(args.get("channel", "")).startswith("D") and not (
                args.get("recipient_user_id") and args.get("recipient_team_id")
            ):
                return 200, {"ok": False, "error": "missing_recipient_user_id"}, {}
            with self.lock:
                self.streams[ts] = {
                    "channel": args.get("channel"),
                    "thread_ts": args.get("thread_ts"),
                    "text": str(args.get("markdown_text") or ""),
                    "streaming": True,
                    "metadata": None,
                }
            return 200, {"ok": True, "channel": args.get("channel"), "ts": ts}, {}
        if method in ("chat.appendStream", "chat.stopStream"):
            if len(str(args.get("markdown_text") or "")) > MARKDOWN_TEXT_LIMIT:
                return 200, {"ok": False, "error": "msg_too_long"}, {}
            with self.lock:
                stream = self.streams.get(str(args.get("ts")))
                if stream is None:
                    return 200, {"ok": False, "error": "message_not_found"}, {}
                if not stream["streaming"]:
                    return 200, {"ok": False, "error": "message_not_in_streaming_state"}, {}
                stream["text"] += str(args.get("markdown_text") or "")
                if method == "chat.stopStream":
                    stream["streaming"] = False
                    stream["metadata"] = args.get("metadata")
            return 200, {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}, {}
        # assistant.threads.setStatus / setSuggestedPrompts / setTitle
        if not args.get("channel_id") or not args.get("thread_ts"):
            return 200, {"ok": False, "error": "invalid_arguments"}, {}
        return 200, {"ok": True}, {}

    def streamed(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The streamed messages in a Slack thread, as conversations.replies lists them."""
        with self.lock:
            # chat.update replaces a message's metadata, when it gives some.
            updated = {
                c.args.get("ts"): c.args["metadata"]
                for c in self.calls
                if c.method == "chat.update" and c.args.get("metadata")
            }
            return [
                {"ts": ts, "text": s["text"], "metadata": updated.get(ts, s["metadata"])}
                for ts, s in self.streams.items()
                if s["channel"] == channel and s["thread_ts"] == thread_ts
            ]

    def wait_live(
        self, channel: str, method: str, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """The calls of `method` about one conversation, once there are `count`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [a for m, a in self.live_calls(channel) if m == method]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} in {channel}: {len(found)} calls, wanted {count}")
            time.sleep(0.02)

    def live_calls(self, channel: str) -> list[tuple[str, dict[str, Any]]]:
        """The streaming, status and post calls about one conversation, in order."""
        with self.lock:
            return [
                (c.method, c.args)
                for c in self.calls
                if c.method in LIVE_METHODS or c.method in ("chat.postMessage", "chat.update")
                if channel in (c.args.get("channel"), c.args.get("channel_id"))
            ]

    socket_url: str = ""
    on_post: Any = None
    """Called with each chat.postMessage before it is answered."""

    @contextmanager
    def serve(self) -> Iterator[FakeSlack]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # Slack's API keeps connections open between calls.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                if url.path.endswith("/oauth/v2/authorize"):
                    # The workspace's admin approves at once; Slack sends the browser back.
                    q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                    redirect_uri = q.get("redirect_uri", "")
                    code = fake.issue_install_code(fake.installing, redirect_uri)
                    back = (
                        redirect_uri
                        + "?"
                        + urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
                    )
                    self.send_response(302)
                    self.send_header("Location", back)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if url.path.endswith("/openid/connect/authorize"):
                    # The user consents at once; Slack sends the browser back.
                    q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
                    code = fake.issue_code(fake.oidc_user, q.get("nonce", ""))
                    back = (
                        q["redirect_uri"]
                        + "?"
                        + urllib.parse.urlencode({"code": code, "state": q.get("state", "")})
                    )
                    self.send_response(302)
                    self.send_header("Location", back)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.do_POST()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length).decode()
                if "json" in self.headers.get("Content-Type", ""):
                    args = json.loads(raw or "{}")
                else:
                    args = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                for k in ("blocks", "view", "metadata"):
                    if isinstance(args.get(k), str):
                        args[k] = json.loads(args[k])
                url = urllib.parse.urlparse(self.path)
                method = url.path.rsplit("/", 1)[-1]
                args.update({k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()})
                if method.startswith("openid."):
                    auth = self.headers.get("Authorization", "")
                    args["_auth"] = auth
                    args["_token"] = args.get("token") or auth.removeprefix("Bearer ")
                status, body, headers = fake.answer(
                    method, args, self.headers.get("Authorization", "")
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        server = _Server(("127.0.0.1", 0), Handler)
        self.port = server.server_address[1]
        t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        t.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (a killed server under test) resets the
        # connection it kept open: not an error of the fake's.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


MARKDOWN_TEXT_LIMIT = 12_000
"""Characters of `markdown_text` Slack takes in one chat.startStream or
chat.appendStream call."""

LIVE_METHODS = frozenset(
    {
        "chat.startStream",
        "chat.appendStream",
        "chat.stopStream",
        "assistant.threads.setStatus",
        "assistant.threads.setSuggestedPrompts",
        "assistant.threads.setTitle",
    }
)


SECRET = "test-signing-secret"


def signed_headers(body: str, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    """The headers Slack sends: a timestamp and the v0 HMAC signature."""
    from slack_sdk.signature import SignatureVerifier

    timestamp = str(at if at is not None else int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


class SlackSender:
    """Posts events and interactivity payloads to the bot as Slack does."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url + "/slack/events"
        self._ids = itertools.count(1)

    def signed_event(
        self, event: dict[str, Any], *, event_id: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """An Events API request body and its headers, signed."""
        payload = {
            "token": "legacy",
            "team_id": "T1",
            "api_app_id": "A1",
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):06d}",
            "event_time": int(time.time()),
            "event": {"event_ts": event.get("ts"), **event},
            "authorizations": [{"team_id": "T1", "user_id": BOT_USER, "is_bot": True}],
        }
        body = json.dumps(payload)
        return body, {"Content-Type": "application/json", **signed_headers(body)}

    def event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry: int | None = None
    ) -> httpx.Response:
        body, headers = self.signed_event(event, event_id=event_id)
        if retry is not None:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return httpx.post(self.url, content=body, headers=headers, timeout=10)

    def interaction(self, payload: dict[str, Any]) -> httpx.Response:
        body = "payload=" + urllib.parse.quote(json.dumps(payload))
        headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(body)}
        return httpx.post(self.url, content=body, headers=headers, timeout=10)

    def click(
        self, user: str, message: dict[str, Any], channel: str, action_id: str
    ) -> httpx.Response:
        """Click the button `action_id` on a message the bot posted."""
        button = next(
            el
            for block in message["blocks"]
            if block["type"] == "actions"
            for el in block["elements"]
            if el["action_id"] == action_id
        )
        return self.interaction(
            {
                "type": "block_actions",
                "user": {"id": user, "username": user.lower(), "team_id": "T1"},
                "team": {"id": "T1", "domain": "t"},
                "api_app_id": "A1",
                "trigger_id": f"trigger-{user}",
                "container": {
                    "type": "message",
                    "message_ts": message["ts"],
                    "channel_id": channel,
                },
                "channel": {"id": channel},
                "message": {"ts": message["ts"], "blocks": message["blocks"]},
                "actions": [
                    {
                        "type": "button",
                        "action_id": action_id,
                        "block_id": "b",
                        "value": button["value"],
                        "action_ts": str(time.time()),
                    }
                ],
            }
        )

    def submit_reject(self, user: str, view: dict[str, Any], reason: str) -> httpx.Response:
        return self.submit_form(user, view, reason)

    def submit_form(self, user: str, view: dict[str, Any], text: str) -> httpx.Response:
        """Submit a form the bot opened (its one text input) as `user`."""
        return self.interaction(
            {
                "type": "view_submission",
                "user": {"id": user, "team_id": "T1"},
                "team": {"id": "T1"},
                "api_app_id": "A1",
                "view": {
                    "id": "V1",
                    "type": "modal",
                    "callback_id": view["callback_id"],
                    "private_metadata": view["private_metadata"],
                    "state": {
                        "values": {"reason": {"text": {"type": "plain_text_input", "value": text}}}
                    },
                },
            }
        )
