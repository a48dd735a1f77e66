"""threadbot's agent: events, derived state, the runner, tools and the model.

from bot import ThreadBot, tool
"""

from .api import Receipt, ThreadBot, ThreadView
from .errors import (
    AlreadyAnswered,
    ModelError,
    NotAllowed,
    NotWaiting,
    Refused,
    ThreadbotError,
    ThreadNotFound,
    ToolError,
    UsageError,
)
from .events import Event, Source
from .model import Model, ModelReply, OpenAIModel, ScriptedModel
from .runner import Delivery, Outbound
from .step import next_step
from .thread import ThreadState, derive
from .tools import Deferred, Tool, Toolbox, ToolContext, load_tools, tool

__all__ = [
    "AlreadyAnswered",
    "Deferred",
    "Delivery",
    "Event",
    "Model",
    "ModelError",
    "ModelReply",
    "NotAllowed",
    "NotWaiting",
    "OpenAIModel",
    "Outbound",
    "Receipt",
    "Refused",
    "ScriptedModel",
    "Source",
    "ThreadBot",
    "ThreadNotFound",
    "ThreadState",
    "ThreadView",
    "ThreadbotError",
    "Tool",
    "ToolContext",
    "ToolError",
    "Toolbox",
    "UsageError",
    "derive",
    "load_tools",
    "next_step",
    "tool",
]
