"""Slack's directory, completing the people directory.

A Slack user id alone says nothing of who the person is elsewhere, while
approvers and the people file may name people by address. `users.info`
gives the address Slack holds for a user, so a click from `U…` counts as the
person with that address; `users.lookupByEmail` gives the user id of an
approver listed by address, so the approval request can mention them.

Installed into several workspaces, each lookup asks the workspace it is
about, with its own token, and the ids it learns are qualified by their
workspace (`T1:U2`, settings.py).

Answers are kept in memory for a while (people rarely change address, and a
click must be acknowledged within seconds). A failed or slow lookup never
blocks: the source is then built from the user id alone, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError

from bot import ADMINS, People, Person, Source

from . import format as fmt
from .settings import mention, qualify, team_of
from .web import WebClients

__all__ = ["SlackDirectory", "SlackUser"]

log = logging.getLogger("threadbot.slack")

TTL = 3600.0
"""How long an answer of Slack's directory is kept (seconds)."""
FAILED_TTL = 60.0
"""How long a failed lookup is remembered, so a missing scope does not cost
every click a call."""
LOOKUP_TIMEOUT = 2.0
"""A lookup on the way to acknowledging a click gives up after this long
(Slack wants the acknowledgement within three seconds)."""


@dataclass(frozen=True, slots=True)
class SlackUser:
    id: str
    name: str
    email: str | None
    enterprise: str | None = None
    """Their Enterprise Grid organization (`enterprise_user.enterprise_id`)."""


def _user(raw: Any) -> SlackUser | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        return None
    profile = raw.get("profile") or {}
    email = profile.get("email") if isinstance(profile, dict) else None
    name = (
        raw.get("real_name")
        or (profile.get("real_name") if isinstance(profile, dict) else None)
        or raw.get("name")
        or ""
    )
    grid = raw.get("enterprise_user")
    enterprise = grid.get("enterprise_id") if isinstance(grid, dict) else None
    return SlackUser(
        id=raw["id"],
        name=str(name),
        email=email if isinstance(email, str) and email else None,
        enterprise=enterprise if isinstance(enterprise, str) and enterprise else None,
    )


class SlackDirectory:
    def __init__(self, people: People, web: WebClients) -> None:
        self.people = people
        self.web = web
        self._users: dict[str, tuple[float, SlackUser | None]] = {}
        self._emails: dict[str, tuple[float, SlackUser | None]] = {}

    # -- lookups, cached ----------------------------------------------------

    async def user(self, user_id: str, team: str | None = None) -> SlackUser | None:
        """`users.info`, or None when Slack does not say."""
        key = qualify(team, user_id)
        return await self._cached(self._users, key, team, "users_info", user=user_id)

    async def by_email(self, email: str, team: str | None = None) -> SlackUser | None:
        """`users.lookupByEmail`, or None when nobody in Slack has it."""
        key = qualify(team, email.lower())
        return await self._cached(self._emails, key, team, "users_lookupByEmail", email=email)

    async def _cached(
        self,
        cache: dict[str, tuple[float, SlackUser | None]],
        key: str,
        team: str | None,
        method: str,
        **args: str,
    ) -> SlackUser | None:
        now = time.monotonic()
        hit = cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found: SlackUser | None = None
        try:
            call = getattr(self.web(team), method)
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                response = await call(**args)
            found = _user(response.get("user"))
            if found is not None:
                found = replace(found, id=qualify(team, found.id))
        except SlackApiError as e:
            log.info("Slack's directory has no answer for %s: %s", key, e.response.get("error"))
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("could not ask Slack's directory about %s: %r", key, e)
        cache[key] = (now + (TTL if found else FAILED_TTL), found)
        return found

    # -- people -------------------------------------------------------------

    async def source(
        self,
        user_id: str,
        *,
        refs: dict[str, str],
        name: str | None = None,
        team: str | None = None,
        member: bool = True,
    ) -> Source:
        """The source of something a Slack user did (Slack authenticated
        them), naming the person the directory knows them as. Installed into
        several workspaces, `team` is the user's own workspace, and the user
        is known as `team:user_id`. Someone who is no `member` (of another
        workspace, in a channel shared with ours) is nobody in the directory:
        not looked up, not linked to a person."""
        person = await self.person(user_id, team) if member else None
        return Source(
            channel="slack",
            auth="slack",
            # A signed request or the Socket Mode connection: the workspace
            # vouches for its own members only.
            member=member,
            user=qualify(team, user_id),
            person=person.id if person else None,
            name=person.display if person else name,
            refs=refs,
        )

    async def person(self, user_id: str, team: str | None = None) -> Person | None:
        """The person behind a Slack user, the directory completed with what
        Slack says of them."""
        found = await self.user(user_id, team)
        if found is None:
            return self.people.find(qualify(team, user_id))
        return self._learn(found)

    def _learn(self, user: SlackUser) -> Person | None:
        """Link a Slack user and their address in the directory, unless the
        people file gives them to two different people: then neither claim is
        trusted over the other, and the Slack id alone counts.

        Installed into several workspaces (ids qualified), the admin of any
        of them can give their users any address: the address links a Slack
        user to nobody, unless it is the address of the person whose `slack`
        entry is in the user's own workspace (the same user, then). People
        are named there by `T…:U…`."""
        by_id = self.people.find(user.id)
        by_email = self.people.find(user.email)
        team = team_of(user.id)
        if (
            team is not None
            and user.email is not None
            and (by_email is None or by_email.slack is None or team_of(by_email.slack) != team)
        ):
            if by_email is not None and by_email is not by_id:
                log.warning(
                    "%s has the address of %s, who has no id in its workspace", user.id, by_email.id
                )
            user, by_email = replace(user, email=None), None
        if by_email is not None and (
            by_email.slack not in (None, user.id) or (by_id is not None and by_id.id != by_email.id)
        ):
            log.warning("%s has the address of %s, who is someone else", user.id, by_email.id)
            return by_id
        return self.people.learn(slack=user.id, email=user.email, name=user.name or None)

    async def mention(self, spec: str, team: str | None = None) -> str:
        """An approver entry for the approval request (posted in workspace
        `team`): a Slack mention when the person's Slack id is known (or
        found by their address), else their name, else the entry as written."""
        if spec.startswith("group:"):
            return f"group {fmt.escape(spec[6:])}"
        person = self.people.find(spec)
        # A mention of someone in another workspace would name nobody there.
        if person is not None and person.slack and team_of(person.slack) == team:
            return mention(person.slack)
        for email in person.emails if person else ((spec,) if "@" in spec else ()):
            found = await self.by_email(email, team)
            if found is None:
                continue
            learned = self._learn(replace(found, email=found.email or email))
            if learned is not None and learned.matches(email) and learned.slack == found.id:
                return mention(found.id)
        return mention(person.display if person else spec)

    async def describe(self, specs: Iterable[str], team: str | None = None) -> list[str]:
        return [await self.mention(s, team) for s in specs]

    def admins(self) -> list[str]:
        """The admins, as mentions where their Slack id is known."""
        return [
            mention(p.slack) if p.slack else fmt.escape(p.display)
            for p in self.people.persons
            if ADMINS in p.groups
        ]
