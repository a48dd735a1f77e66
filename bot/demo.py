"""The offline demo model: a few fixed rules that drive the example ops tools,
so that launch → question → answer → approval → result can be tried with no
model account. It is not an LLM, and every reply says so.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .context import Context
from .model import ModelCall, ModelReply

__all__ = ["DemoModel"]

Message = dict[str, Any]

_SERVICES = ("api", "web", "worker")
_VERSION = re.compile(r"\b\d+(?:\.\d+)+\b")
_PREFIX = "(demo model) "
WORD_PAUSE = 0.03
"""Seconds between the words of a text reply shown as it is written."""


def _call(name: str, **arguments: Any) -> ModelReply:
    return ModelReply(
        calls=(ModelCall(f"call_{uuid.uuid4().hex[:12]}", name, json.dumps(arguments)),)
    )


def _service(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    return next((s for s in _SERVICES if s in words), None)


class DemoModel:
    name = "offline demo model (fixed rules, not an LLM)"

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        reply = self._reply(context.messages)
        if on_text is not None and reply.text:
            # Word by word with a short pause, as a real model writes, so
            # that the web page shows the reply arriving.
            for word in re.findall(r"\S+\s*", reply.text):
                on_text(word)
                await asyncio.sleep(WORD_PAUSE)
        return reply

    def _reply(self, messages: Sequence[Message]) -> ModelReply:
        last = messages[-1]
        if last["role"] == "tool":
            return self._after_tool(messages, last)
        text = str(last.get("content") or "")
        lowered = text.lower()
        service = _service(text)
        if "deploy" in lowered:
            if service is None:
                return _call(
                    "request_human_input",
                    question="Which service should I deploy?",
                    options=list(_SERVICES),
                )
            if (version := _VERSION.search(text)) is None:
                return _call(
                    "request_human_input", question=f"Which version of {service} should I deploy?"
                )
            return _call("deploy", service=service, version=version.group())
        if "status" in lowered or "health" in lowered:
            return _call("service_status", service=service or "api")
        return ModelReply(
            text=_PREFIX + "I can look up a service's status or deploy one. "
            "Try “deploy the api” or “status of worker”."
        )

    def _after_tool(self, messages: Sequence[Message], last: Message) -> ModelReply:
        call = _call_of(messages, last["tool_call_id"])
        result = str(last["content"])
        name = call["function"]["name"] if call else ""
        args = json.loads(call["function"]["arguments"]) if call else {}
        if name == "request_human_input":
            question = str(args.get("question", ""))
            if question.startswith("Which service"):
                service = _service(result) or result.strip()
                return _call(
                    "request_human_input", question=f"Which version of {service} should I deploy?"
                )
            service = _service(question) or "api"
            version = _VERSION.search(result)
            return _call("deploy", service=service, version=version.group() if version else result)
        if name == "deploy":
            if result.startswith("rejected"):
                return ModelReply(text=_PREFIX + f"Understood, I did not deploy: {result}")
            return ModelReply(text=_PREFIX + f"Done: {result}.")
        return ModelReply(text=_PREFIX + f"{name} says: {result}")


def _call_of(messages: Sequence[Message], call_id: str) -> dict[str, Any] | None:
    for m in reversed(messages):
        for c in m.get("tool_calls") or ():
            if c["id"] == call_id:
                return dict(c)
    return None
