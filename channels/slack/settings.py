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
    "is_user_id",
    "mention",
    "post_route_key",
    "route_key",
]

WORKING = "eyes"
"""The reaction put on a message while the agent works on it."""

_USER_ID = re.compile(r"^[UW][A-Z0-9]+$")


def route_key(channel: str, thread_ts: str) -> str:
    """The thread's own Slack conversation: anyone in it may write."""
    return f"slack:{channel}:{thread_ts}"


def post_route_key(channel: str, ts: str) -> str:
    """A post of a request to an approver (a direct message, their approvals
    channel): a reply under it reaches the thread, from people who may write
    in it only."""
    return f"slack:post:{channel}:{ts}"


def is_user_id(who: str | None) -> bool:
    """Whether `who` has the shape of a Slack user id."""
    return bool(who and _USER_ID.match(who))


def mention(who: str | None) -> str:
    """A user id as a Slack mention; anything else as plain text."""
    if is_user_id(who):
        return f"<@{who}>"
    return fmt.escape(who or "someone")


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str
    signing_secret: str | None = None
    app_token: str | None = None
    """An xapp- token: Socket Mode, no public URL needed."""
    api_url: str | None = None
    """The Web API's base URL (tests, proxies)."""

    @property
    def socket_mode(self) -> bool:
        return bool(self.app_token)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SlackSettings | None:
        env = os.environ if env is None else env
        token = env.get("SLACK_BOT_TOKEN")
        if not token:
            return None
        return cls(
            bot_token=token,
            signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
            app_token=env.get("SLACK_APP_TOKEN") or None,
            api_url=env.get("SLACK_API_URL") or None,
        )
