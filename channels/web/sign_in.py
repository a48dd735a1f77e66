"""Signing in to the web page: by a link sent by email, or with Slack (OpenID Connect).

Either way the result is the same: a session cookie naming a person from the
people file, and a CSRF token the page sends with its writes
(channels/auth.py checks both). Nobody outside the people file gets a
session: an address or a Slack account is only a way to prove which person
you are.

The routes live under `/auth/`, which the authentication layer leaves open
(it still tells them who is signed in, if anyone).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import Credentials, People, Person

from ..auth import SESSION_COOKIE, Identity

__all__ = ["LINK_TTL", "SESSION_TTL", "SignInSettings", "mount_sign_in"]

log = logging.getLogger("threadbot.sign_in")

LINK_TTL = 15 * 60
"""A sign-in link's life: long enough to switch to the mail client, short
enough that an old mail in a mailbox opens nothing."""
SESSION_TTL = 12 * 60 * 60
"""A working day; then the page asks again."""
OIDC_TTL = 10 * 60
"""How long a Slack sign-in may take between leaving and coming back."""
OIDC_COOKIE = "threadbot_oidc"
SLACK_AUTHORIZE = "https://slack.com/openid/connect/authorize"

SendLink = Callable[[str, str], Awaitable[None]]
"""Mails a sign-in link: (address, link)."""


@dataclass(frozen=True)
class SignInSettings:
    public_url: str | None = None
    """THREADBOT_PUBLIC_URL: the base of the links and of Slack's redirect URL."""
    slack_client_id: str | None = None
    """SLACK_CLIENT_ID and SLACK_CLIENT_SECRET turn on "Sign in with Slack"."""
    slack_client_secret: str | None = None
    slack_api_url: str | None = None
    """SLACK_API_URL: the Web API's base (a local fake in the tests)."""
    slack_authorize_url: str = SLACK_AUTHORIZE
    """SLACK_OIDC_AUTHORIZE_URL: where the browser is sent to sign in."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SignInSettings:
        env = os.environ if env is None else env
        return cls(
            public_url=(env.get("THREADBOT_PUBLIC_URL") or "").rstrip("/") or None,
            slack_client_id=env.get("SLACK_CLIENT_ID") or None,
            slack_client_secret=env.get("SLACK_CLIENT_SECRET") or None,
            slack_api_url=env.get("SLACK_API_URL") or None,
            slack_authorize_url=env.get("SLACK_OIDC_AUTHORIZE_URL") or SLACK_AUTHORIZE,
        )

    @property
    def slack(self) -> bool:
        return bool(self.slack_client_id and self.slack_client_secret)

    @property
    def secure(self) -> bool:
        """Cookies only over TLS when the server is reached over TLS."""
        return (self.public_url or "").startswith("https://")


class EmailIn(BaseModel):
    email: str = Field(max_length=320)


def _page(title: str, message: str, status: int) -> HTMLResponse:
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · threadbot</title>
<link rel="stylesheet" href="/ui/app.css"></head>
<body><main><h1>{escape(title)}</h1><p>{escape(message)}</p>
<p><a href="/">Back to threadbot</a></p></main></body></html>
"""
    return HTMLResponse(body, status_code=status)


def _identity(request: Request) -> Identity | None:
    found = request.scope.get("state", {}).get("identity")
    return found if isinstance(found, Identity) else None


def _id_token_claims(token: str) -> dict[str, Any]:
    """The claims of an ID token received straight from Slack's token endpoint
    over TLS: OpenID Connect Core 3.1.3.7 lets the client trust that channel
    instead of checking the signature. What is checked is the nonce."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return {}
    return data if isinstance(data, dict) else {}


def mount_sign_in(
    app: FastAPI,
    *,
    credentials: Credentials,
    people: People,
    settings: SignInSettings,
    send_link: SendLink | None,
    signed_out: Callable[[str], None] | None = None,
) -> None:
    """The `/auth/` routes. `send_link` is None when the email channel is off.
    `signed_out(who)` is told of each sign-out (`Identity.who`): the event
    streams of that session end at once."""
    pending_mail: set[asyncio.Task[None]] = set()

    def base(request: Request) -> str:
        # The Host was checked against the allowlist by the guard.
        return settings.public_url or str(request.base_url).rstrip("/")

    def signed_in(person: Person, auth: str) -> Response:
        cookie, _ = credentials.create_session(person.id, auth, SESSION_TTL)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=SESSION_TTL,
            path="/",
            httponly=True,
            samesite="lax",
            secure=settings.secure,
        )
        log.info("%s signed in (%s)", person.id, auth)
        return response

    @app.get("/auth/me", include_in_schema=False)
    async def me(request: Request) -> JSONResponse:
        identity = _identity(request)
        if identity is None:
            # What the page may offer instead.
            return JSONResponse(
                {
                    "error": "nobody is signed in",
                    "email": send_link is not None and bool(people.persons),
                    "slack": settings.slack,
                },
                status_code=401,
            )
        body: dict[str, Any] = {
            "name": identity.name,
            "person": identity.person,
            "auth": identity.auth,
            "admin": identity.admin,
        }
        if identity.csrf is not None:
            body["csrf"] = identity.csrf
        return JSONResponse(body)

    @app.post("/auth/logout", include_in_schema=False)
    async def logout(request: Request) -> JSONResponse:
        identity = _identity(request)
        # /auth/ is open, so the CSRF rule is applied here.
        sent = request.headers.get("x-csrf-token", "")
        if (
            identity is None
            or identity.csrf is None
            or not hmac.compare_digest(sent, identity.csrf)
        ):
            return JSONResponse(
                {"error": "sign out needs this session's X-CSRF-Token"}, status_code=403
            )
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            credentials.end_session(cookie)
            if signed_out is not None:
                signed_out(identity.who)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
        return response

    # -- a link by email ----------------------------------------------------------

    @app.post("/auth/email", status_code=202, include_in_schema=False)
    async def email_link(request: Request, body: EmailIn) -> JSONResponse:
        """Always the same answer, so that nobody learns which addresses are
        known; the mail goes out in the background for the same reason."""
        address = body.email.strip().lower()
        person = people.find(address) if "@" in address else None
        if person is not None and address in person.emails:
            if send_link is None:
                log.warning("email sign-in asked for %s, but the email channel is off", person.id)
            else:
                link = f"{base(request)}/auth/email/callback?" + urlencode(
                    {"token": credentials.create_link(person.id, LINK_TTL)}
                )
                task = asyncio.create_task(_mail(send_link, address, link))
                pending_mail.add(task)
                task.add_done_callback(pending_mail.discard)
        return JSONResponse(
            {"status": "if that address belongs to someone here, a sign-in link is on its way"},
            status_code=202,
        )

    @app.get("/auth/email/callback", include_in_schema=False)
    async def email_callback(token: str = "") -> Response:
        person_id = credentials.use_link(token) if token else None
        person = people.find(person_id)
        if person is None:
            return _page(
                "This sign-in link does not work",
                "It was used already, is older than 15 minutes, or is not one of ours. "
                "Ask for a new one on the sign-in page.",
                400,
            )
        return signed_in(person, "session:email")

    # -- Sign in with Slack (OpenID Connect) ------------------------------------------

    def redirect_uri(request: Request) -> str:
        return f"{base(request)}/auth/slack/callback"

    @app.get("/auth/slack", include_in_schema=False)
    async def slack_start(request: Request) -> Response:
        if not settings.slack:
            return _page("Sign in with Slack is off", "SLACK_CLIENT_ID is not set.", 404)
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        query = urlencode(
            {
                "response_type": "code",
                "scope": "openid email profile",
                "client_id": settings.slack_client_id,
                "state": state,
                "nonce": nonce,
                "redirect_uri": redirect_uri(request),
            }
        )
        response = RedirectResponse(f"{settings.slack_authorize_url}?{query}", status_code=303)
        # Binds the answer to this browser: a callback carrying someone
        # else's code (login CSRF) finds no matching state here.
        response.set_cookie(
            OIDC_COOKIE,
            f"{state}.{nonce}",
            max_age=OIDC_TTL,
            path="/auth/slack",
            httponly=True,
            samesite="lax",
            secure=settings.secure,
        )
        return response

    @app.get("/auth/slack/callback", include_in_schema=False)
    async def slack_callback(request: Request, code: str = "", state: str = "") -> Response:
        expected_state, _, nonce = request.cookies.get(OIDC_COOKIE, "").partition(".")
        if not settings.slack or not code or not expected_state:
            return _refused("Start again from the sign-in page.", 400)
        if not hmac.compare_digest(state, expected_state):
            return _refused("This answer from Slack is not for this browser's sign-in.", 400)
        assert settings.slack_client_id and settings.slack_client_secret  # settings.slack
        api = settings.slack_api_url or AsyncWebClient.BASE_URL
        api = api if api.endswith("/") else api + "/"
        try:
            token = await AsyncWebClient(base_url=api).openid_connect_token(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret,
                code=code,
                redirect_uri=redirect_uri(request),
            )
            claims = _id_token_claims(str(token.get("id_token") or ""))
            if not nonce or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
                return _refused("Slack's answer does not match this sign-in.", 400)
            info = await AsyncWebClient(
                token=str(token["access_token"]), base_url=api
            ).openid_connect_userInfo()
        except SlackApiError as e:
            log.warning("Slack sign-in failed: %s", e.response.get("error"))
            return _refused("Slack did not confirm who you are.", 400)
        user = str(info.get("https://slack.com/user_id") or "")
        team = str(info.get("https://slack.com/team_id") or "")
        # Installed into several workspaces, the people file names Slack
        # users with their workspace (`T1:U2`); with one, by the id alone.
        person = (people.find(f"{team}:{user}") if team and user else None) or people.find(user)
        email = str(info.get("email") or "").lower()
        if person is None and email and info.get("email_verified"):
            person = people.find(email)
        if person is None:
            return _refused(
                "Your Slack account is not in this threadbot's people file; ask its operator.",
                403,
            )
        response = signed_in(person, "session:slack")
        response.delete_cookie(OIDC_COOKIE, path="/auth/slack")
        return response


def _refused(message: str, status: int) -> Response:
    response = _page("Sign in with Slack did not work", message, status)
    response.delete_cookie(OIDC_COOKIE, path="/auth/slack")
    return response


async def _mail(send_link: SendLink, address: str, link: str) -> None:
    try:
        await send_link(address, link)
    except Exception:  # a relay down is logged; the page said the same either way
        log.exception("could not mail a sign-in link to %s", address)
