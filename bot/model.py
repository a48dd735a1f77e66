"""The model behind a small protocol: the real one over the `openai` SDK, and
a scripted one that replays canned replies (tests, the offline demo).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .context import Context
from .errors import ModelError
from .observe import Usage

if TYPE_CHECKING:
    import openai

__all__ = [
    "Model",
    "ModelCall",
    "ModelReply",
    "OpenAIModel",
    "ScriptedModel",
    "TextSink",
    "ask",
    "call",
    "say",
]

Message = dict[str, Any]

TextSink = Callable[[str], None]
"""Takes each piece of the reply's text as the model writes it (for people
watching); called on the model's loop, it must not block."""


@dataclass(frozen=True, slots=True)
class ModelCall:
    id: str
    name: str
    arguments: str
    """The JSON text the model wrote; parsed (and checked) by the runner."""


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str | None = None
    calls: tuple[ModelCall, ...] = ()
    usage: Usage | None = field(default=None, compare=False)
    """The tokens the call used, when the server said (for metrics only)."""


class Model(Protocol):
    name: str
    """Shown at start-up and in the thread's errors."""

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: TextSink | None = None,
    ) -> ModelReply:
        """One Chat Completions turn. `context.parts` are the serialized
        messages; `context.messages` parses them for models that read them."""
        ...


class OpenAIModel:
    """Chat Completions with tools, on OpenAI or any compatible server.

    The SDK does transport, retries with backoff on 429/5xx and connection
    errors, timeouts and the stream's server-sent events. The request body is
    serialized here: `chat.completions.create()` validates and transforms
    every message of the context on every call, which in a long thread costs
    more than the rest of a resume put together. With `on_text` the reply is
    asked for as a stream and read as plain JSON, its text handed to
    `on_text` piece by piece; it is returned once whole. A stream that breaks
    off is a `ModelError`: nothing of it is kept. Without `on_text` (nobody
    watches) it comes whole, which costs the model's server and this process
    less.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 3,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.model = model
        self.name = f"{model} via {base_url or 'api.openai.com'}"
        # Imported here: the SDK takes longer to import than the rest of
        # threadbot, and commands that never call a model should not pay it.
        import openai

        self._openai = openai
        self._owns_client = client is None
        self.client = client or openai.AsyncOpenAI(
            # Local servers (Ollama, vLLM, llama.cpp) accept any key.
            api_key=api_key or "unused",
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            # The SDK's aiohttp transport: its connection pool stays cheap
            # with hundreds of requests in flight (httpx's scans every
            # connection for every request) and each call costs less CPU.
            http_client=openai.DefaultAioHttpClient(timeout=timeout),
        )
        head = b'{"model":' + json.dumps(model).encode()
        self._heads = {True: head + b',"stream":true,"messages":[', False: head + b',"messages":['}
        self._tools_cache: tuple[Sequence[dict[str, Any]], bytes] | None = None

    async def aclose(self) -> None:
        """Close the connections of a client this model created."""
        if self._owns_client:
            await self.client.close()

    def _tail(self, tools: Sequence[dict[str, Any]]) -> bytes:
        # The runner passes the same list on every call: serialize it once.
        if self._tools_cache is None or self._tools_cache[0] is not tools:
            tail = b',"tools":' + json.dumps(list(tools)).encode() if tools else b""
            self._tools_cache = (tools, b"]" + tail + b"}")
        return self._tools_cache[1]

    def body(
        self, context: Context, tools: Sequence[dict[str, Any]], *, stream: bool = True
    ) -> bytes:
        head, parts = self._heads[stream], context.parts
        if not parts:
            return head + self._tail(tools)
        # One join, so that a long context is copied once.
        return b",".join([head + parts[0], *parts[1:-1], parts[-1] + self._tail(tools)])

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: TextSink | None = None,
    ) -> ModelReply:
        openai = self._openai
        from openai import AsyncStream

        try:
            # Each chunk as the JSON object it is (`object`): the SDK's typed
            # chunk costs about 0.1 ms to build, and there is one per token.
            stream = await self.client.post(
                "/chat/completions",
                cast_to=object,
                content=self.body(context, tools, stream=on_text is not None),
                options={"headers": {"Content-Type": "application/json"}},
                stream=True,
                stream_cls=AsyncStream[object],
            )
        except openai.APIStatusError as e:
            # Retrying cannot fix a bad key, a missing model or a bad request.
            fatal = e.status_code in (400, 401, 403, 404, 422)
            raise ModelError(f"model error {e.status_code}: {_brief(e)}", fatal=fatal) from e
        except openai.APIError as e:
            raise ModelError(f"model unreachable: {_brief(e)}") from e
        async with stream:
            try:
                if _media_type(stream.response.headers).endswith("json"):
                    # Some compatible servers send the whole completion at
                    # once, whatever `stream` asked for.
                    return _whole_reply(json.loads(await stream.response.aread()))
                return await _streamed_reply(stream, on_text)
            except openai.APIError as e:
                # The connection dropped, a read timed out, or the server
                # sent an error in the stream.
                raise ModelError(f"the model's reply broke off: {_brief(e)}") from e
            except ValueError as e:
                raise ModelError(f"the model's reply is not JSON: {_brief(e)}") from e
            except (AttributeError, TypeError) as e:
                raise ModelError(f"the model's reply is not a chat completion: {e}") from e


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _whole_reply(completion: dict[str, Any]) -> ModelReply:
    """The reply of a completion sent in one piece."""
    choices = completion.get("choices")
    if not choices:
        raise ModelError("model returned no choices")
    message = choices[0].get("message") or {}
    calls = []
    for c in message.get("tool_calls") or ():
        if c.get("type", "function") == "function":
            function = c.get("function") or {}
            calls.append(
                ModelCall(
                    c.get("id") or "", function.get("name") or "", function.get("arguments") or "{}"
                )
            )
    return ModelReply(
        text=message.get("content"), calls=tuple(calls), usage=_usage(completion.get("usage"))
    )


def _usage(counts: Any) -> Usage | None:
    """A completion's token counts, if it has them as numbers."""
    if not isinstance(counts, dict):
        return None
    prompt, completion = counts.get("prompt_tokens"), counts.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(prompt, completion)


@dataclass(slots=True)
class _CallPieces:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


async def _streamed_reply(chunks: AsyncIterator[Any], on_text: TextSink | None) -> ModelReply:
    """The reply of a streamed completion, put together as it arrives: each
    piece of text goes to `on_text` at once; a tool call comes in pieces (its
    id and name, then its arguments a few characters at a time)."""
    text: list[str] = []
    calls: dict[int | str, _CallPieces] = {}
    last: int | str = 0
    finished = False
    usage: Usage | None = None
    async for chunk in chunks:
        if chunk.get("usage") is not None:
            # Sent by servers that count a stream's tokens unasked (threadbot
            # does not ask: some compatible servers refuse `stream_options`).
            usage = _usage(chunk["usage"]) or usage
        for choice in chunk.get("choices") or ():  # none in a chunk that only counts tokens
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                text.append(content)
                if on_text is not None:
                    on_text(content)
            for piece in delta.get("tool_calls") or ():
                # Some servers (Ollama, Gemini's) leave out the index: a piece
                # with an id of its own is a new call, one without goes on
                # with the last.
                if (index := piece.get("index")) is not None:
                    last = index
                elif piece.get("id"):
                    last = piece["id"]
                call = calls.setdefault(last, _CallPieces())
                call.id = piece.get("id") or call.id
                function = piece.get("function") or {}
                call.name += function.get("name") or ""
                if arguments := function.get("arguments"):
                    call.arguments.append(arguments)
            if choice.get("finish_reason") is not None:
                finished = True
    if not finished:
        raise ModelError("the model's stream ended before its reply did")
    return ModelReply(
        text="".join(text) if text else None,
        calls=tuple(ModelCall(c.id, c.name, "".join(c.arguments) or "{}") for c in calls.values()),
        usage=usage,
    )


def _brief(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 300 else text[:299] + "…"


# -- scripted ------------------------------------------------------------------

Script = ModelReply | Callable[[Sequence[Message]], ModelReply]


@dataclass
class ScriptedModel:
    """Replays canned replies in order; a reply may be a function of the
    messages. Records every request. Never an LLM, and says so."""

    replies: deque[Script] = field(default_factory=deque)
    name: str = "scripted model (canned replies, not an LLM)"
    requests: list[list[Message]] = field(default_factory=list)

    @classmethod
    def of(cls, *replies: Script) -> ScriptedModel:
        return cls(deque(replies))

    def enqueue(self, *replies: Script) -> None:
        self.replies.extend(replies)

    async def complete(
        self,
        context: Context,
        tools: Sequence[dict[str, Any]],
        *,
        on_text: TextSink | None = None,
    ) -> ModelReply:
        messages = context.messages
        self.requests.append(messages)
        if not self.replies:
            raise ModelError("the scripted model has no reply left")
        reply = self.replies.popleft()
        reply = reply(messages) if callable(reply) else reply
        if on_text is not None and reply.text:
            for piece in re.findall(r"\S+\s*|\s+", reply.text):
                on_text(piece)  # word by word, as a streaming model would
        return reply


def call(name: str, /, **arguments: Any) -> ModelReply:
    return ModelReply(
        calls=(ModelCall(f"call_{uuid.uuid4().hex[:12]}", name, json.dumps(arguments)),)
    )


def ask(question: str, options: Iterable[str] | None = None) -> ModelReply:
    args: dict[str, Any] = {"question": question}
    if options is not None:
        args["options"] = list(options)
    return call("request_human_input", **args)


def say(text: str) -> ModelReply:
    return ModelReply(text=text)
