"""threadbot's errors.

    ThreadbotError
    ├── UsageError          developer or operator misuse (a bad tool, bad config)
    ├── ThreadNotFound      no thread with that id
    ├── Refused             the request does not fit what the thread waits for
    │   ├── NotWaiting      it waits for nothing of the kind
    │   ├── AlreadyAnswered someone settled that call before (says who)
    │   └── NotAllowed      this person may not answer or decide it
    └── ModelError          the model could not be reached or answered badly

`ToolError` is not a failure of threadbot: a tool raises it to hand the model
a compact message to correct course with.
"""

from __future__ import annotations

__all__ = [
    "AlreadyAnswered",
    "ModelError",
    "NotAllowed",
    "NotWaiting",
    "Refused",
    "ThreadNotFound",
    "ThreadbotError",
    "ToolError",
    "UsageError",
]


class ThreadbotError(Exception):
    """Base of threadbot's errors."""


class UsageError(ThreadbotError):
    """threadbot was used wrongly: a tool definition, a setting, an argument."""


class ThreadNotFound(ThreadbotError):
    def __init__(self, thread_id: str) -> None:
        super().__init__(f"no thread {thread_id!r}")
        self.thread_id = thread_id


class Refused(ThreadbotError):
    """A response, decision or result that does not fit the thread; nothing was written."""


class NotWaiting(Refused):
    pass


class AlreadyAnswered(Refused):
    def __init__(self, message: str, by: str | None, user: str | None = None) -> None:
        super().__init__(message)
        self.by = by
        """Who settled it, as a display name."""
        self.user = user
        """Who settled it, as the platform's user id (for a mention)."""


class NotAllowed(Refused):
    pass


class ModelError(ThreadbotError):
    """The model call failed. `fatal` when retrying cannot help (bad key, unknown model)."""

    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


class ToolError(Exception):
    """Raised by a tool: the message goes to the model as the call's error result."""
