"""Installing threadbot into several Slack workspaces: Slack's OAuth flow.

`/slack/install` sends the installer's browser to Slack's authorize page
with a one-time state (kept in the state store, and in a cookie of that
browser); `/slack/oauth_redirect` takes the code Slack sends back, asks
`oauth.v2.access` for the workspace's bot token, and saves the installation.
Both are Bolt's; the stores are slack_sdk's, chosen by the composition root
(in threadbot's own database). Each request from Slack is then authorized for
its workspace from the installation store, and each call to Slack uses the
workspace's own token (web.py).

Only the workspaces the operator lists (`SLACK_TEAMS`) may install it: a
workspace's members start threads, and count as known to this deployment.
Someone of another workspace, in a channel shared with an installed one
(Slack Connect), is known by their own workspace's id and counts as a
member only if that workspace is listed and installed too (channel.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.authorization.async_authorize import AsyncInstallationStoreAuthorize
from slack_bolt.authorization.authorize_result import AuthorizeResult
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.error import BoltError
from slack_bolt.oauth.async_callback_options import AsyncFailureArgs
from slack_bolt.oauth.async_oauth_flow import AsyncOAuthFlow
from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.installation_store.async_installation_store import AsyncInstallationStore
from slack_sdk.oauth.installation_store.installation_store import InstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient

from bot import People, Tool, UsageError

from .settings import SlackSettings, is_user_id, team_of
from .web import base_url

__all__ = [
    "SCOPES",
    "Installations",
    "authorize",
    "check_people",
    "oauth_flow",
    "teams_from_env",
]

log = logging.getLogger("threadbot.slack")

SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "chat:write",
    "chat:write.public",
    "im:history",
    "im:read",
    "im:write",
    "channels:history",
    "groups:history",
    "mpim:history",
    "reactions:write",
    "users:read",
    "users:read.email",
)
"""The bot scopes asked for at install: the manifest's (manifest.yml)."""

TOKEN_TTL = 60.0
"""How long a workspace's bot token is used before the store is asked again
(a reinstall gives a new one)."""

ANY_TEAM = "*"


@dataclass
class Installations:
    """Where installations and the OAuth flow's states are kept: slack_sdk's
    stores, which the composition root picks for threadbot's database."""

    store: AsyncInstallationStore
    """Bolt's: saved at install, read to authorize each request."""
    states: AsyncOAuthStateStore
    """The one-time states of installs under way."""
    bots: InstallationStore
    """The same installations, read without awaiting: a workspace's token
    for a call to Slack (SQLite: the same store as `store`)."""
    teams: tuple[str, ...] = ()
    """SLACK_TEAMS: the workspaces that may install threadbot (`*`: any)."""
    aclose: Callable[[], Awaitable[None]] | None = None
    """Closes the stores' connections (on the server's loop), if they keep any."""
    _tokens: dict[str, tuple[float, str | None]] = field(default_factory=dict, repr=False)

    def allows(self, team: str | None) -> bool:
        return bool(team) and (ANY_TEAM in self.teams or team in self.teams)

    def bot_token(self, team: str) -> str | None:
        """The workspace's bot token, or None where threadbot is not installed
        (or the workspace is no longer allowed)."""
        if not self.allows(team):
            return None
        now = time.monotonic()
        hit = self._tokens.get(team)
        if hit is not None and hit[0] > now:
            return hit[1]
        bot = self.bots.find_bot(enterprise_id=None, team_id=team)
        token = bot.bot_token if bot is not None else None
        self._tokens[team] = (now + TOKEN_TTL, token)
        return token

    async def installed(self, team: str | None) -> bool:
        """Whether `team` is listed and installed: its members are known to
        this deployment. (A person of another workspace in a channel shared
        with an installed one is not, unless theirs is installed too.)"""
        if not self.allows(team):
            return False
        bot = await self.store.async_find_bot(enterprise_id=None, team_id=team)
        return bot is not None

    def forget(self, team: str) -> None:
        """Ask the store again next time (the workspace was installed anew)."""
        self._tokens.pop(team, None)


def teams_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("SLACK_TEAMS") or ""
    return tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))


class _Flow(AsyncOAuthFlow):
    """Bolt's flow, refusing workspaces the operator did not list."""

    def __init__(self, installations: Installations, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.installations = installations
        self.failure_handler = self._failure

    async def _failure(self, args: AsyncFailureArgs) -> BoltResponse:
        """Bolt's page for a failed install, saying why when it is ours."""
        if isinstance(args.error, _NotAllowed):
            log.warning("refused an install: %s", args.error)
            args = AsyncFailureArgs(
                request=args.request,
                reason="workspace_not_allowed",
                error=args.error,
                suggested_status_code=403,
                settings=args.settings,
                default=args.default,
            )
        return await self.default_callback_options.failure(args)

    async def store_installation(
        self, request: AsyncBoltRequest, installation: Installation
    ) -> None:
        team = installation.team_id
        if installation.is_enterprise_install or not self.installations.allows(team):
            raise _NotAllowed(team)
        await super().store_installation(request, installation)
        # A reinstall may bring a new token: use it from now on.
        self.installations.forget(team or "")
        log.info("installed in the Slack workspace %s (%s)", team, installation.team_name)


class _NotAllowed(BoltError):
    def __init__(self, team: str | None) -> None:
        super().__init__(f"the Slack workspace {team} may not install this threadbot")
        self.team = team


def oauth_flow(settings: SlackSettings, installations: Installations) -> AsyncOAuthFlow:
    """`/slack/install` and `/slack/oauth_redirect`, Bolt's."""
    assert settings.client_id and settings.client_secret  # settings.oauth
    oauth = AsyncOAuthSettings(
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scopes=list(SCOPES),
        user_scopes=[],
        redirect_uri=settings.redirect_uri,
        # Straight to Slack's authorize page: no page of Bolt's in between.
        install_page_rendering_enabled=False,
        authorization_url=settings.authorize_url,
        installation_store=installations.store,
        installation_store_bot_only=True,
        state_store=installations.states,
    )
    return _Flow(installations, client=AsyncWebClient(base_url=base_url(settings)), settings=oauth)


class _Authorize(AsyncInstallationStoreAuthorize):
    """Bolt's authorization from the installation store, for listed
    workspaces only (one the operator took off the list is refused even
    though it is still installed)."""

    def __init__(self, installations: Installations) -> None:
        super().__init__(
            logger=log,
            installation_store=installations.store,
            bot_only=True,
            # The answer of auth.test per token, kept: not one call per request.
            cache_enabled=True,
        )
        self.installations = installations

    async def __call__(
        self,
        *,
        context: AsyncBoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        actor_enterprise_id: str | None = None,
        actor_team_id: str | None = None,
        actor_user_id: str | None = None,
    ) -> AuthorizeResult | None:
        if not self.installations.allows(team_id):
            log.warning("a request from the Slack workspace %s, which is not listed", team_id)
            return None
        return await super().__call__(
            context=context,
            enterprise_id=enterprise_id,
            team_id=team_id,
            user_id=user_id,
            actor_enterprise_id=actor_enterprise_id,
            actor_team_id=actor_team_id,
            actor_user_id=actor_user_id,
        )


def authorize(installations: Installations) -> AsyncInstallationStoreAuthorize:
    return _Authorize(installations)


def check_people(people: People, tools: Iterable[Tool] = ()) -> None:
    """Installed into several workspaces, a Slack id names someone only
    with its workspace (`T123:U456`): a bare one in the people file, the
    approvers or a tool's approvers would name nobody, so it is refused."""
    for p in people.persons:
        for what, value in (("slack", p.slack), ("slack_channel", p.slack_channel)):
            if value and team_of(value) is None:
                raise UsageError(
                    f"people file: {p.id}'s {what} {value!r} needs its workspace now that "
                    f"threadbot is installed into several (SLACK_CLIENT_ID): write "
                    f"'T…:{value}' with the workspace's team id"
                )
    named = [("THREADBOT_APPROVERS", spec) for spec in people.approvers]
    named += [(f"the tool {t.name}'s approvers", spec) for t in tools for spec in t.approvers]
    for where, spec in named:
        if is_user_id(spec) and team_of(spec) is None:
            raise UsageError(
                f"{where}: the Slack id {spec!r} needs its workspace now that "
                f"threadbot is installed into several (SLACK_CLIENT_ID): write 'T…:{spec}'"
            )
