"""Email: conversations, questions and approvals by mail."""

from .channel import EmailChannel
from .parse import InboundMail, parse_mail
from .settings import EmailSettings
from .tokens import ReplyTokens

__all__ = ["EmailChannel", "EmailSettings", "InboundMail", "ReplyTokens", "parse_mail"]
