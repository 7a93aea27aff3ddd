"""ScriptedChatServer: a real OpenAI-compatible HTTP server on 127.0.0.1 that plays a script.

It serves `POST /v1/chat/completions` with `stream=true` as Server-Sent Events over chunked
HTTP/1.1, one scripted reply per request, and `GET /v1/models`. It exists to script timelines
and faults (slow tokens, None deltas, 5xx, 401, stalls, dropped connections, malformed chunks)
that a real model cannot produce on demand, and streamed tool calls (`ToolDelta` fragments,
interleaved across parallel calls if the script says so, then `finish_reason: "tool_calls"`).
Every request is recorded (with its arrival time and body), including whether the client hung
up early.

    async with ScriptedChatServer([tokens("Hello", " world", delay=0.01)]) as server:
        llm = OpenAILLM("scripted", base_url=server.base_url)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "Drop",
    "ErrorEvent",
    "HttpError",
    "NoChoices",
    "Raw",
    "RecordedRequest",
    "Reply",
    "ScriptedChatServer",
    "Stall",
    "StreamReply",
    "Token",
    "ToolDelta",
    "tokens",
    "tool_call_reply",
]


@dataclass(frozen=True)
class Token:
    """Send one chunk whose delta content is `text` (None sends `"content": null`)."""

    text: str | None
    delay: float = 0.0


@dataclass(frozen=True)
class NoChoices:
    """Send a chunk with an empty `choices` list (as usage chunks do)."""

    delay: float = 0.0


@dataclass(frozen=True)
class Stall:
    """Send nothing for `seconds` (the connection stays open)."""

    seconds: float = 60.0


@dataclass(frozen=True)
class ErrorEvent:
    """Send an SSE `{"error": ...}` event, then end the response (a mid-stream server error)."""

    message: str = "internal server error"
    code: int = 500
    delay: float = 0.0


@dataclass(frozen=True)
class Drop:
    """Close the connection abruptly, without finishing the chunked body."""

    delay: float = 0.0


@dataclass(frozen=True)
class Raw:
    """Send the SSE line `data: <data>` as is, without JSON-encoding (e.g. a malformed chunk)."""

    data: str
    delay: float = 0.0


@dataclass(frozen=True)
class ToolDelta:
    """Send one tool-call fragment: `delta.tool_calls = [{index, id?, type?, function: {name?,
    arguments?}}]` (fields left None are omitted, as real servers do after the first fragment)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None
    delay: float = 0.0


Step = Token | NoChoices | Stall | ErrorEvent | Drop | Raw | ToolDelta


@dataclass(frozen=True)
class StreamReply:
    """A 200 SSE response playing `steps`; if `finish`, end with a chunk carrying
    `finish_reason` and then `[DONE]`."""

    steps: tuple[Step, ...]
    finish: bool = True
    finish_reason: str = "stop"


@dataclass(frozen=True)
class HttpError:
    """A plain HTTP error response (e.g. 500 before any token, 401 bad key)."""

    status: int
    message: str = "scripted error"
    delay: float = 0.0


Reply = StreamReply | HttpError


def tokens(*texts: str | None, delay: float = 0.0) -> StreamReply:
    """A reply streaming `texts` as deltas, each sent after `delay` seconds."""
    return StreamReply(tuple(Token(text, delay) for text in texts))


def tool_call_reply(
    *calls: tuple[str, str, str],
    text: Sequence[str] = (),
    pieces: int = 3,
    interleave: bool = False,
    delay: float = 0.0,
) -> StreamReply:
    """A reply that says `text` (as deltas), then calls tools: each ``(id, name, arguments)``
    streamed as a first fragment (id and name) and `pieces` argument fragments; with
    `interleave`, the argument fragments of the calls alternate. Ends with "tool_calls"."""
    steps: list[Step] = [Token(piece, delay) for piece in text]
    per_call: list[list[ToolDelta]] = []
    for index, (call_id, name, arguments) in enumerate(calls):
        size = max(1, -(-len(arguments) // pieces))
        parts = [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
        per_call.append([ToolDelta(index, arguments=part, delay=delay) for part in parts])
        if not interleave:
            steps.append(ToolDelta(index, call_id, name, "", delay))
            steps += per_call[-1]
    if interleave:
        steps += [ToolDelta(i, c[0], c[1], "", delay) for i, c in enumerate(calls)]
        longest = max((len(parts) for parts in per_call), default=0)
        steps += [parts[n] for n in range(longest) for parts in per_call if n < len(parts)]
    return StreamReply(tuple(steps), finish_reason="tool_calls")


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    closed_by_client: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    received_at: float = field(default_factory=time.monotonic)
    step_times: list[float] = field(default_factory=list)  # when each scripted step went out
    finished_at: float | None = None  # when the finish_reason chunk went out

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages sent (empty for non-chat requests)."""
        if isinstance(self.body, dict):
            messages = self.body.get("messages")
            if isinstance(messages, list):
                return messages
        return []


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _ClientGone(Exception):
    pass


class ScriptedChatServer:
    """The fake server. `replies` is a list (the last one repeats) or a function of the request.

    Use as an async context manager; `base_url` is "http://127.0.0.1:PORT/v1".
    """

    def __init__(
        self,
        replies: Sequence[Reply] | Callable[[RecordedRequest], Reply],
        *,
        model: str = "scripted",
    ) -> None:
        if not callable(replies) and not replies:
            raise ValueError("ScriptedChatServer needs at least one reply")
        self._replies = replies
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._stack = AsyncExitStack()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Requests to /v1/chat/completions, in arrival order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def __aenter__(self) -> ScriptedChatServer:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        await self._stack.enter_async_context(listener)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_group = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(task_group.cancel_scope.cancel)
        task_group.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def _reply_for(self, request: RecordedRequest) -> Reply:
        if callable(self._replies):
            return self._replies(request)
        chat_index = len(self.chat_requests) - 1
        return self._replies[min(chat_index, len(self._replies) - 1)]

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            reader = BufferedByteReceiveStream(client)
            try:
                request = await self._read_request(reader)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                return
            self.requests.append(request)
            try:
                await self._respond(client, reader, request)
            except (_ClientGone, anyio.BrokenResourceError, anyio.ClosedResourceError):
                request.closed_by_client = True
            finally:
                request.done.set()

    async def _read_request(self, reader: BufferedByteReceiveStream) -> RecordedRequest:
        head = await reader.receive_until(b"\r\n\r\n", 65536)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.receive_exactly(length) if length else b""
        body: Any = json.loads(raw) if raw else None
        return RecordedRequest(len(self.requests), method, path, headers, body)

    async def _respond(
        self,
        client: anyio.abc.SocketStream,
        reader: BufferedByteReceiveStream,
        request: RecordedRequest,
    ) -> None:
        if request.method == "GET" and request.path.endswith("/models"):
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            await _send_json(client, 200, models)
            return
        if request.method != "POST" or not request.path.endswith("/chat/completions"):
            await _send_json(client, 404, _error_body(f"no route {request.method} {request.path}"))
            return
        if not isinstance(request.body, dict) or request.body.get("stream") is not True:
            await _send_json(client, 400, _error_body("ScriptedChatServer only streams"))
            return
        reply = self._reply_for(request)
        if isinstance(reply, HttpError):
            await anyio.sleep(reply.delay)
            await _send_json(client, reply.status, _error_body(reply.message, reply.status))
            return
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(_watch_for_hangup, reader, task_group.cancel_scope, request)
            try:
                await self._stream(client, reply, request)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                request.closed_by_client = True  # the client hung up while we were writing
            task_group.cancel_scope.cancel()
        if request.closed_by_client:
            raise _ClientGone

    async def _stream(
        self, client: anyio.abc.SocketStream, reply: StreamReply, request: RecordedRequest
    ) -> None:
        await client.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        await _send_event(client, self._chunk({"role": "assistant", "content": ""}))
        for step in reply.steps:
            if isinstance(step, Stall):
                request.step_times.append(time.monotonic())
                await anyio.sleep(step.seconds)
                continue
            await anyio.sleep(step.delay)
            request.step_times.append(time.monotonic())
            if isinstance(step, Token):
                await _send_event(client, self._chunk({"content": step.text}))
            elif isinstance(step, NoChoices):
                await _send_event(client, self._envelope([]))
            elif isinstance(step, Raw):
                await _send_event(client, step.data)
            elif isinstance(step, ToolDelta):
                await _send_event(client, self._chunk({"tool_calls": [_fragment(step)]}))
            elif isinstance(step, ErrorEvent):
                error = {"error": {"message": step.message, "type": "server_error",
                                   "code": step.code}}
                await _send_event(client, json.dumps(error))
                await client.send(b"0\r\n\r\n")
                return
            else:  # Drop
                return
        if reply.finish:
            request.finished_at = time.monotonic()
            finish = self._chunk({}, finish_reason=reply.finish_reason)
            await _send_event(client, finish + "\n\ndata: [DONE]")
            await client.send(b"0\r\n\r\n")

    def _envelope(self, choices: list[dict[str, Any]]) -> str:
        return json.dumps({
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices,
        })

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return self._envelope([{"index": 0, "delta": delta, "finish_reason": finish_reason}])


def _fragment(step: ToolDelta) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": step.index}
    if step.id is not None:
        fragment["id"] = step.id
        fragment["type"] = "function"
    function = {key: value for key, value in (("name", step.name), ("arguments", step.arguments))
                if value is not None}
    if function:
        fragment["function"] = function
    return fragment


async def _watch_for_hangup(
    reader: BufferedByteReceiveStream, scope: anyio.CancelScope, request: RecordedRequest
) -> None:
    """The client sends nothing after its request; EOF here means it closed the connection."""
    try:
        await reader.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    request.closed_by_client = True
    scope.cancel()


async def _send_event(client: anyio.abc.SocketStream, data: str) -> None:
    payload = f"data: {data}\n\n".encode()
    await client.send(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")


async def _send_json(client: anyio.abc.SocketStream, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
        "connection: close\r\n\r\n"
    )
    await client.send(head.encode() + payload)


def _error_body(message: str, status: int = 400) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "code": status}}
