"""The shape of what Slack sends, checked before Bolt reads it.

Bolt trusts a signed request's shape, and a malformed one (a signed payload
with an `actions` entry that is not an object, say) makes it fail with a 500.
These models accept everything Slack sends and refuse the rest with a 400.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["shape_problem"]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Event(_Loose):
    type: str
    user: str | None = None
    channel: str | None = None
    channel_type: str | None = None
    ts: str | None = None
    thread_ts: str | None = None
    text: str | None = None
    subtype: str | None = None
    bot_id: str | None = None


class _EventsApi(_Loose):
    type: str
    event: _Event | None = None


class _User(_Loose):
    id: str


class _Action(_Loose):
    action_id: str
    value: str | None = None


class _Container(_Loose):
    channel_id: str | None = None
    message_ts: str | None = None


class _View(_Loose):
    callback_id: str | None = None
    private_metadata: str | None = None
    state: dict[str, dict[str, dict[str, Any]]] | None = None


class _Interaction(_Loose):
    type: str
    user: _User | None = None
    actions: list[_Action] | None = None
    container: _Container | None = None
    view: _View | None = None
    trigger_id: str | None = None


def shape_problem(body: bytes, content_type: str) -> str | None:
    """None when the body looks like something Slack sends, else why not."""
    try:
        if "application/x-www-form-urlencoded" in content_type:
            form = parse_qs(body.decode(), strict_parsing=False)
            if "payload" in form:
                _Interaction.model_validate_json(form["payload"][0])
            return None  # slash commands and the like: plain form fields
        data = json.loads(body or b"{}")
        if not isinstance(data, dict):
            return "the body is not a JSON object"
        if data.get("type") == "url_verification":
            return None
        _EventsApi.model_validate(data)
    except (ValidationError, ValueError, UnicodeDecodeError) as e:
        return f"malformed Slack request: {str(e).splitlines()[0]}"
    return None
