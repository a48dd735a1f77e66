"""Slack settings, and small things both directions share."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import format as fmt

__all__ = [
    "WORKING",
    "SlackSettings",
    "bare",
    "is_user_id",
    "mention",
    "post_route_key",
    "qualify",
    "route_key",
    "team_of",
]

WORKING = "eyes"
"""The reaction put on a message while the agent works on it."""

_USER_ID = re.compile(r"^(?:[TE][A-Z0-9]+:)?[UW][A-Z0-9]+$")


# Installed into several workspaces (OAuth), a Slack id is written with its
# workspace, `T123:U456` (a user) or `T123:C789` (a conversation): two
# workspaces' identical ids never meet, in keys, in the people file or in who
# decides. With one workspace's token, ids stay bare, as they always were.


def qualify(team: str | None, ident: str) -> str:
    """`ident` in workspace `team` (`T1:U2`); bare without a team."""
    return f"{team}:{ident}" if team else ident


def team_of(ident: str) -> str | None:
    """The workspace of a qualified id; None for a bare one."""
    team, sep, _ = ident.partition(":")
    return team if sep else None


def bare(ident: str) -> str:
    """The id as Slack's API knows it, without its workspace."""
    return ident.rpartition(":")[2]


def route_key(channel: str, thread_ts: str, team: str | None = None) -> str:
    """The thread's own Slack conversation: anyone in it may write."""
    return f"slack:{qualify(team, channel)}:{thread_ts}"


def post_route_key(channel: str, ts: str, team: str | None = None) -> str:
    """A post of a request to an approver (a direct message, their approvals
    channel): a reply under it reaches the thread, from people who may write
    in it only."""
    return f"slack:post:{qualify(team, channel)}:{ts}"


def is_user_id(who: str | None) -> bool:
    """Whether `who` has the shape of a Slack user id (bare or qualified)."""
    return bool(who and _USER_ID.match(who))


def mention(who: str | None) -> str:
    """A user id as a Slack mention; anything else as plain text."""
    if who and is_user_id(who):
        return f"<@{bare(who)}>"
    return fmt.escape(who or "someone")


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str | None = None
    """SLACK_BOT_TOKEN: one workspace's bot token. Without it, and with the
    app's client id and secret, the app is installed into workspaces by
    Slack's OAuth flow and each workspace's token is kept in the database."""
    signing_secret: str | None = None
    app_token: str | None = None
    """An xapp- token: Socket Mode, no public URL needed."""
    api_url: str | None = None
    """The Web API's base URL (tests, proxies)."""
    client_id: str | None = None
    """SLACK_CLIENT_ID and SLACK_CLIENT_SECRET: the app's credentials, for
    installing it into several workspaces (and for signing in with Slack)."""
    client_secret: str | None = None
    redirect_uri: str | None = None
    """SLACK_REDIRECT_URI: the OAuth redirect URL, when the Slack app lists
    more than one (else Slack uses the one it lists)."""
    authorize_url: str | None = None
    """Slack's authorize page (tests)."""

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)

    @property
    def oauth(self) -> bool:
        """Installed into workspaces by OAuth, rather than one workspace's
        token: the app's client id and secret and its signing secret, and no
        bot token. (The client id and secret alone sign people in with Slack
        on the web page, and turn no Slack channel on.)"""
        return not self.bot_token and bool(
            self.client_id and self.client_secret and self.signing_secret
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlackSettings | None:
        env = os.environ if env is None else env
        found = cls(
            bot_token=env.get("SLACK_BOT_TOKEN") or None,
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            api_url=env.get("SLACK_API_URL") or None,
            client_id=env.get("SLACK_CLIENT_ID") or None,
            client_secret=env.get("SLACK_CLIENT_SECRET") or None,
            redirect_uri=env.get("SLACK_REDIRECT_URI") or None,
            authorize_url=env.get("SLACK_OAUTH_AUTHORIZE_URL") or None,
        )
        return found if found.bot_token or found.oauth else None
