"""The OpenAI chat-completions wire format: history and tools out, stream chunks in.

`wire_messages` / `wire_tools` build the request. `ReplyDecoder` turns the stream's chunks into
`TextDelta`s (as they arrive) and whole `ToolCall`s: tool-call fragments are accumulated by
their `index` (id and name in the first fragment, argument text after, fragments of parallel
calls may interleave), and the calls are released together, in index order, when the chunk
carrying `finish_reason` arrives (or the stream ends without one).

With ``text_tool_calls`` the decoder also recognises a call written as JSON in the reply text
(``{"name": ..., "arguments": {...}}``, a list of them, in a ```json fence or in
``<tool_call>`` tags), as small local models often do. Only a reply that *starts* that way is
held back and parsed; if it is not a call to an offered tool it is released as text, whole.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion_function_tool_param import (
    ChatCompletionFunctionToolParam,
)

from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolCall, ToolSchema

__all__ = ["MalformedChunk", "ReplyDecoder", "parse_text_calls", "wire_messages", "wire_tools"]

_OPENERS = ("{", "[", "```", "<tool_call>")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class MalformedChunk(ValueError):
    """A stream chunk that lacks the chat.completion.chunk shape (says what is wrong)."""


def new_call_id() -> str:
    """An id for a call the server sent without one (unique across the conversation)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def wire_tools(tools: Sequence[ToolSchema]) -> list[ChatCompletionFunctionToolParam]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


def wire_messages(
    messages: Sequence[ChatMessage], *, native_tools: bool = True
) -> list[ChatCompletionMessageParam]:
    """The history in the wire format, in order (the agent puts its instructions first).

    Empty assistant messages without tool calls (a reply interrupted before any of it was
    heard) are dropped. With ``native_tools=False`` (a server that knows no tool messages) an
    assistant's calls are written back as the JSON text such a model writes, and each tool
    result becomes a user message naming the tool.
    """
    wire: list[ChatCompletionMessageParam] = []
    names: dict[str, str] = {}
    for message in messages:
        if message.role == "system":
            wire.append({"role": "system", "content": message.content})
        elif message.role == "user":
            wire.append({"role": "user", "content": message.content})
        elif message.role == "tool":
            call_id = message.tool_call_id or ""
            if native_tools:
                wire.append({"role": "tool", "tool_call_id": call_id, "content": message.content})
            else:
                name = names.get(call_id, "tool")
                wire.append({"role": "user", "content": f"[{name} returned] {message.content}"})
        elif message.tool_calls:
            names.update((call.id, call.name) for call in message.tool_calls)
            if native_tools:
                wire.append({
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        }
                        for call in message.tool_calls
                    ],
                })
            else:
                text = " ".join(filter(None, [message.content, _calls_as_text(message)]))
                wire.append({"role": "assistant", "content": text})
        elif message.content:
            wire.append({"role": "assistant", "content": message.content})
    return wire


def _calls_as_text(message: ChatMessage) -> str:
    written = [
        {"name": c.name, "arguments": _loads_or_text(c.arguments)} for c in message.tool_calls
    ]
    return json.dumps(written[0] if len(written) == 1 else written)


def _loads_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


@dataclass
class _Partial:
    id: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ReplyDecoder:
    """Chunks in, `TextDelta`s and whole `ToolCall`s out (see the module docstring).

    `started` turns true at the first content (text or a tool-call fragment): the "first
    token" for timeouts and retries. `finished` turns true at the `finish_reason` chunk.
    """

    def __init__(self, *, text_tool_calls: bool = False, tool_names: Collection[str] = ()) -> None:
        self.started = False
        self.finished = False
        self.finish_reason: str | None = None
        self._partials: dict[int, _Partial] = {}
        self._released = False
        self._text_calls = text_tool_calls and bool(tool_names)
        self._tool_names = frozenset(tool_names)
        self._held: list[str] | None = [] if self._text_calls else None

    def feed(self, chunk: ChatCompletionChunk) -> list[LLMChunk]:
        """What this chunk completes. Raises `MalformedChunk`."""
        try:
            choices = chunk.choices
            if not choices:
                return []
            choice = choices[0]
            delta = choice.delta
            text: object = delta.content
            fragments: object = delta.tool_calls
            finish: object = choice.finish_reason
        except (AttributeError, TypeError, IndexError, KeyError):
            raise MalformedChunk("a chunk without choices[0].delta") from None
        if text is not None and not isinstance(text, str):
            raise MalformedChunk("delta.content is not a string")
        out: list[LLMChunk] = []
        if text:
            self.started = True
            out += self._text(text)
        if fragments is not None and not self.finished:
            if not isinstance(fragments, list):
                raise MalformedChunk("delta.tool_calls is not a list")
            for fragment in fragments:
                self._add_fragment(fragment)
        if finish is not None and not self.finished:
            self.finished = True
            self.finish_reason = str(finish)
            out += self._release()
        return out

    def finish(self) -> list[LLMChunk]:
        """At the end of the stream: whatever is still held (calls without a finish chunk)."""
        return self._release()

    def _text(self, text: str) -> list[LLMChunk]:
        if self._held is None:
            return [TextDelta(text)]
        self._held.append(text)
        start = "".join(self._held).lstrip()
        if not start:
            return []
        if any(start.startswith(o) or o.startswith(start) for o in _OPENERS):
            return []  # may be a call written as text: hold it until the end
        held, self._held = "".join(self._held), None
        return [TextDelta(held)]

    def _add_fragment(self, fragment: Any) -> None:
        try:
            index: object = getattr(fragment, "index", None)
            call_id: object = fragment.id
            function: Any = fragment.function
            name: object = function.name if function is not None else None
            arguments: object = function.arguments if function is not None else None
        except AttributeError:
            raise MalformedChunk("a tool_calls entry without id/function") from None
        for value, what in ((call_id, "id"), (name, "name"), (arguments, "arguments")):
            if value is not None and not isinstance(value, str):
                raise MalformedChunk(f"tool call {what} is not a string")
        if not isinstance(index, int) or isinstance(index, bool):
            # Some servers omit the index: a fragment with a new id starts a new call.
            known = {p.id for p in self._partials.values()}
            last = max(self._partials, default=-1)
            index = last + 1 if last < 0 or (call_id and call_id not in known) else last
        self.started = True
        partial = self._partials.setdefault(index, _Partial())
        if isinstance(call_id, str) and call_id and not partial.id:
            partial.id = call_id
        if isinstance(name, str) and name and name != partial.name:
            partial.name += name
        if isinstance(arguments, str) and arguments:
            partial.arguments.append(arguments)

    def _release(self) -> list[LLMChunk]:
        out: list[LLMChunk] = []
        if self._held is not None:
            held, self._held = "".join(self._held), None
            calls = parse_text_calls(held, self._tool_names)
            out += calls if calls else ([TextDelta(held)] if held else [])
        if self._released:
            return out
        self._released = True
        for index in sorted(self._partials):
            partial = self._partials[index]
            if not partial.name:
                raise MalformedChunk(f"tool call {index} has no function name")
            out.append(ToolCall(partial.id or new_call_id(), partial.name,
                                "".join(partial.arguments)))
        return out


def parse_text_calls(text: str, tool_names: Collection[str]) -> list[ToolCall]:
    """The calls written as JSON in ``text``, if the whole reply is calls to known tools."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    blocks = _TAGGED.findall(body) if body.startswith("<tool_call>") else [body]
    calls: list[ToolCall] = []
    for block in blocks:
        try:
            parsed: Any = json.loads(block)
        except json.JSONDecodeError:
            return []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            call = _text_call(item, tool_names)
            if call is None:
                return []
            calls.append(call)
    return calls


def _text_call(item: Any, tool_names: Collection[str]) -> ToolCall | None:
    if not isinstance(item, dict):
        return None
    function = item.get("function")
    if isinstance(function, dict):  # {"type": "function", "function": {...}}
        item = function
    name = item.get("name")
    arguments = item.get("arguments", item.get("parameters", {}))
    if not isinstance(name, str) or name not in tool_names:
        return None
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(new_call_id(), name, text)
