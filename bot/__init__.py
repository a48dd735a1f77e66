"""threadbot's agent: events, derived state, the runner, tools and the model.

    from bot import ThreadBot, tool

What this package exports is what channels and the composition root use:
nothing outside `bot` needs its modules' own names.
"""

from store import SCOPES, Credentials, ThreadRow

from .api import AwaitingDecision, Receipt, ThreadBot, ThreadView
from .durations import seconds
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
from .events import DEADLINE, Event, Source
from .live import Activity, Appended, Changed, Delta, News, Watch
from .model import Model, ModelReply, OpenAIModel, ScriptedModel
from .notices import (
    Answer,
    ApprovalRequest,
    Cancellation,
    Delivery,
    Failure,
    FollowUp,
    Notice,
    Outbound,
    Outcome,
    Question,
    Said,
)
from .observe import Observer, Observers, Usage
from .people import ADMINS, Deciders, People, Person
from .render import iso_utc
from .step import next_step
from .thread import Status, ThreadState, derive
from .tools import Deferred, Tool, Toolbox, ToolContext, load_tools, tool
from .webhooks import Webhooks

__all__ = [
    "ADMINS",
    "DEADLINE",
    "SCOPES",
    "Activity",
    "AlreadyAnswered",
    "Answer",
    "Appended",
    "ApprovalRequest",
    "AwaitingDecision",
    "Cancellation",
    "Changed",
    "Credentials",
    "Deciders",
    "Deferred",
    "Delivery",
    "Delta",
    "Event",
    "Failure",
    "FollowUp",
    "Model",
    "ModelError",
    "ModelReply",
    "News",
    "NotAllowed",
    "NotWaiting",
    "Notice",
    "Observer",
    "Observers",
    "OpenAIModel",
    "Outbound",
    "Outcome",
    "People",
    "Person",
    "Question",
    "Receipt",
    "Refused",
    "Said",
    "ScriptedModel",
    "Source",
    "Status",
    "ThreadBot",
    "ThreadNotFound",
    "ThreadRow",
    "ThreadState",
    "ThreadView",
    "ThreadbotError",
    "Tool",
    "ToolContext",
    "ToolError",
    "Toolbox",
    "Usage",
    "UsageError",
    "Watch",
    "Webhooks",
    "derive",
    "iso_utc",
    "load_tools",
    "next_step",
    "seconds",
    "tool",
]
