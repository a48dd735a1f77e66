"""Slack: conversations, questions and one-click approvals in Slack threads."""

from .channel import SlackChannel
from .settings import SlackSettings, route_key

__all__ = ["SlackChannel", "SlackSettings", "route_key"]
