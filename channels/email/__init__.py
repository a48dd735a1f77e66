"""Email: conversations, questions and approvals by mail."""

from .channel import EmailChannel, EmailSettings
from .compose import ReplyTokens
from .parse import InboundMail, parse_mail

__all__ = ["EmailChannel", "EmailSettings", "InboundMail", "ReplyTokens", "parse_mail"]
