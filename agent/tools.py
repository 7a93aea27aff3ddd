"""Function calling: `@tool` turns a plain function into something the model can call, and a
`ToolBox` runs the calls of one model response, answering every call exactly once.

    @tool
    async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, object]:
        '''The current weather in a city.

        Args:
            city: The city's name, e.g. "Paris".
        '''
        ...

    async with ToolBox([get_weather]) as toolbox:
        ...  # llm.stream(history, tools=toolbox.schemas) yields TextDelta and ToolCall
        round = toolbox.round(calls)
        append_tool_round(history, round, text)  # the history is valid from here on
        await round.run()                        # each tool message gets its result

The contract, for the turn runner:

* Exactly one `ToolResult` per call, in call order, whatever happens: the value (a str as is,
  anything else as JSON), or an error the model can read: unknown tool, arguments that are not
  JSON, arguments that do not fit the schema, an exception, a timeout (per tool), or a
  cancellation.
* `ToolRound.run()` runs the calls concurrently and returns when all have results. Cancelling
  it (barge-in cancels the turn's scope) cancels every tool with
  ``cancel_on_interruption=True`` (the default): each gets the result "cancelled because the
  user interrupted" at once, and the cancellation propagates (never swallowed). A tool with
  ``cancel_on_interruption=False`` runs in the ToolBox's own task group, which outlives the
  turn: it runs to completion, its result lands later (``late=True``), is written into its tool
  message in the history (recorded, not spoken) and passed to ``on_late_result``. Until then its
  tool message says the result is still pending, so the history stays valid for the next turn.
* The ToolBox must be open (``async with``). Leaving the block waits up to ``close_timeout``
  seconds for tools still running, then cancels them ("cancelled because the agent shut down").
* A sync tool runs in a worker thread. A thread cannot be stopped: on a timeout or cancellation
  its result is abandoned (the thread finishes on its own).
* A tool may ask for a `ToolContext` (annotate a parameter with it): the call, and the
  ``context`` object the ToolBox was given (e.g. the agent, for a built-in ``end_call``).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import logging
import re
import time
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterable,
    Iterator,
    MutableSequence,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

import anyio
import anyio.abc

from agent.interfaces import LLM, ChatMessage, TextDelta, ToolCall, ToolSchema
from agent.redact import redact
from agent.toolschema import SchemaError, function_spec, validate

__all__ = [
    "DEFAULT_TIMEOUT",
    "InvalidHistory",
    "ReplyChunk",
    "SchemaError",
    "Tool",
    "ToolBox",
    "ToolContext",
    "ToolResult",
    "ToolRound",
    "ToolsFinished",
    "ToolsStarted",
    "append_tool_round",
    "check_history",
    "reply_with_tools",
    "tool",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds a tool may run before its call gets a timeout result (per tool: ``@tool(timeout=)``).
DEFAULT_TIMEOUT = 10.0
INTERRUPTED = "cancelled because the user interrupted"
SHUTDOWN = "cancelled because the agent shut down"
PENDING = "still running; its result will be recorded here when it arrives"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ResultKind = Literal[
    "ok",
    "pending",
    "unknown_tool",
    "bad_json",
    "invalid_arguments",
    "error",
    "timeout",
    "cancelled",
]


@dataclass(frozen=True)
class ToolContext:
    """What a tool can ask for by annotating a parameter with this type (not shown to the model).

    `call` is the call being answered; `state` is the ``context`` the ToolBox was given.
    """

    call: ToolCall
    state: Any = None


class Tool(Generic[P, R]):
    """A function the model may call. Calling the Tool calls the function itself.

    Build one with `@tool`. `schema` is what the model is told.
    """

    def __init__(
        self,
        function: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        cancel_on_interruption: bool = True,
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        if not _NAME.match(self.name):
            raise SchemaError(
                f"tool name {self.name!r}: use 1-64 letters, digits, '_' or '-' (pass name=)"
            )
        if timeout is not None and timeout <= 0:
            raise SchemaError(f"tool {self.name!r}: timeout must be > 0 seconds (or None)")
        spec = function_spec(function, inject=lambda hint: hint is ToolContext)
        self.description = description if description is not None else spec.description
        self.parameters = spec.parameters
        self.timeout = timeout
        self.cancel_on_interruption = cancel_on_interruption
        self.is_async = inspect.iscoroutinefunction(function)
        self._decode = spec.decode
        self._injected = spec.injected

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.function(*args, **kwargs)

    @property
    def schema(self) -> ToolSchema:
        """The name, description and JSON-schema parameters the model is told about."""
        return ToolSchema(self.name, self.description, self.parameters)

    def prepare(self, arguments: str) -> dict[str, Any] | tuple[ResultKind, str]:
        """Keyword arguments from the model's JSON text, or why they are unusable."""
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return "bad_json", f"the arguments are not valid JSON ({exc.msg} at {exc.pos})"
        errors = validate(self.parameters, parsed)
        if errors:
            return "invalid_arguments", "the arguments do not fit the schema: " + "; ".join(
                errors[:5]
            )
        return self._decode(parsed)

    async def invoke(self, kwargs: dict[str, Any], context: ToolContext, *, abandon: bool) -> Any:
        """Call the function (a sync one in a worker thread). Cancelling it cancels an async
        tool; a sync tool's thread is abandoned if ``abandon``, else waited for."""
        kwargs = {**kwargs, **{name: context for name in self._injected}}
        function = cast(Callable[..., Any], self.function)
        if self.is_async:
            return await function(**kwargs)
        return await anyio.to_thread.run_sync(
            partial(function, **kwargs), abandon_on_cancel=abandon
        )


@overload
def tool(function: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    cancel_on_interruption: bool = True,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    function: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    cancel_on_interruption: bool = True,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Make a plain function (sync or async) a `Tool`: ``@tool`` or ``@tool(name=..., ...)``.

    The schema comes from the type hints; the description and per-parameter text from the
    docstring. Raises `SchemaError` at once for a signature a model cannot fill.
    """

    def make(fn: Callable[P, R]) -> Tool[P, R]:
        return Tool(
            fn,
            name=name,
            description=description,
            timeout=timeout,
            cancel_on_interruption=cancel_on_interruption,
        )

    return make(function) if function is not None else make


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The one answer to one call. `content` is what the model reads in the tool message.

    `late` marks a result that landed after its round was interrupted (recorded, not spoken).
    """

    call: ToolCall
    kind: ResultKind
    content: str
    value: Any = None
    seconds: float = 0.0
    late: bool = False

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    @classmethod
    def failure(cls, call: ToolCall, kind: ResultKind, message: str, **extra: Any) -> ToolResult:
        return cls(call, kind, json.dumps({"error": message}), **extra)


class ToolRound:
    """The calls of one model response and, for each, exactly one result (in call order).

    Made by `ToolBox.round`. Until `run()` lands them, every result is "pending".
    """

    def __init__(self, box: ToolBox, calls: Sequence[ToolCall]) -> None:
        ids = [call.id for call in calls]
        if len(set(ids)) != len(ids) or not all(ids):
            raise ValueError(f"tool call ids must be unique and non-empty: {ids!r}")
        self.calls = tuple(calls)
        self.interrupted = False
        self._box = box
        self._results = [
            ToolResult(call, "pending", json.dumps({"status": PENDING})) for call in calls
        ]
        self._landed = [anyio.Event() for _ in calls]
        self._kept = [False] * len(calls)
        self._messages: list[ChatMessage] | None = None
        self._started = False

    def __repr__(self) -> str:
        kinds = ", ".join(f"{r.call.name}:{r.kind}" for r in self._results)
        return f"ToolRound({kinds})"

    @property
    def results(self) -> tuple[ToolResult, ...]:
        """One result per call, in call order ("pending" for those not landed yet)."""
        return tuple(self._results)

    @property
    def done(self) -> bool:
        """Whether every call has its final result (late ones included)."""
        return all(event.is_set() for event in self._landed)

    def messages(self, text: str = "") -> list[ChatMessage]:
        """The assistant message (``text`` and the calls) and one tool message per call.

        The same objects every time: each tool message's content is updated in place when its
        result lands, so the history holding them is valid at every moment.
        """
        if self._messages is None:
            self._messages = [ChatMessage("assistant", text, tool_calls=self.calls)]
            self._messages += [
                ChatMessage("tool", result.content, tool_call_id=result.call.id)
                for result in self._results
            ]
        return self._messages

    async def run(self) -> tuple[ToolResult, ...]:
        """Run every call concurrently; return the results once all have landed.

        Cancelling it cancels the tools with ``cancel_on_interruption=True`` (their results:
        "cancelled because the user interrupted", set before the cancellation propagates) and
        leaves the others running in the ToolBox's task group; their results land later.
        """
        if self._started:
            raise RuntimeError("a ToolRound runs once; make a new one with toolbox.round()")
        self._started = True
        group = self._box._group_or_raise()
        try:
            async with anyio.create_task_group() as task_group:
                for i, call in enumerate(self.calls):
                    prepared = self._box._prepare(call)
                    if isinstance(prepared, ToolResult):
                        self._land(i, prepared)
                        continue
                    chosen, kwargs = prepared
                    if chosen.cancel_on_interruption:
                        task_group.start_soon(self._call, i, chosen, kwargs)
                    else:
                        self._kept[i] = True
                        group.start_soon(self._call, i, chosen, kwargs)
                        task_group.start_soon(self._landed[i].wait)
        except BaseException:
            self.interrupted = True
            for i, result in enumerate(self._results):
                if result.kind == "pending" and not self._kept[i]:
                    self._land(i, ToolResult.failure(result.call, "cancelled", INTERRUPTED))
            raise
        return self.results

    async def wait_all(self) -> tuple[ToolResult, ...]:
        """Wait until every result has landed, late ones included. Cancelling stops waiting only."""
        for event in self._landed:
            await event.wait()
        return self.results

    async def _call(self, i: int, chosen: Tool[..., Any], kwargs: dict[str, Any]) -> None:
        call = self.calls[i]
        kept = self._kept[i]
        started = time.monotonic()
        context = ToolContext(call, self._box.context)
        result: ToolResult | None = None
        try:
            with anyio.move_on_after(chosen.timeout) as deadline:
                value = await chosen.invoke(kwargs, context, abandon=not kept)
                result = _success(call, value, time.monotonic() - started)
            if deadline.cancelled_caught:
                log.warning("tool %s timed out after %g s", chosen.name, chosen.timeout)
                result = ToolResult.failure(
                    call,
                    "timeout",
                    f"the tool timed out after {chosen.timeout:g} s",
                    seconds=time.monotonic() - started,
                )
        except anyio.get_cancelled_exc_class():
            reason = SHUTDOWN if kept else INTERRUPTED
            self._land(i, ToolResult.failure(call, "cancelled", reason))
            raise
        except Exception as exc:  # the tool's own failure: the model is told, the turn goes on
            log.warning("tool %s raised %s", chosen.name, type(exc).__name__, exc_info=True)
            detail = redact(" ".join(str(exc).split()))[:300]
            text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            result = ToolResult.failure(
                call, "error", f"the tool failed: {text}", seconds=time.monotonic() - started
            )
        finally:
            if kept:
                self._box._kept_finished()
        assert result is not None
        self._land(i, result)

    def _land(self, i: int, result: ToolResult) -> None:
        if self._landed[i].is_set():
            return
        late = self.interrupted
        if late:
            result = dataclasses.replace(result, late=True)
        self._results[i] = result
        if self._messages is not None:
            self._messages[i + 1].content = result.content
        self._landed[i].set()
        if late and self._box.on_late_result is not None:
            try:
                self._box.on_late_result(result)
            except Exception:
                log.exception("on_late_result failed for tool %s", result.call.name)


class ToolBox:
    """The tools of an agent, and the task group where tools that outlive a turn run.

    Use as ``async with ToolBox([...]) as toolbox:``. `schemas` goes to ``llm.stream(tools=)``;
    `round(calls)` makes the handle that runs one response's calls (see the module's contract).
    ``context`` is handed to tools that ask for a `ToolContext`; ``on_late_result`` receives
    results that land after their round was interrupted.
    """

    def __init__(
        self,
        tools: Iterable[Tool[..., Any]] = (),
        *,
        context: object = None,
        on_late_result: Callable[[ToolResult], None] | None = None,
        close_timeout: float = 5.0,
    ) -> None:
        self._tools: dict[str, Tool[..., Any]] = {}
        for each in tools:
            self.add(each)
        self.context = context
        self.on_late_result = on_late_result
        self.close_timeout = close_timeout
        self._group: anyio.abc.TaskGroup | None = None
        self._running = 0
        self._idle = anyio.Event()

    def __repr__(self) -> str:
        return f"ToolBox({', '.join(self._tools)})"

    def add(self, new: Tool[..., Any]) -> None:
        """Register a tool (e.g. a built-in such as ``end_call``). Names must be unique."""
        if new.name in self._tools:
            raise ValueError(f"a tool named {new.name!r} is already in the ToolBox")
        self._tools[new.name] = new

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[..., Any]]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def schemas(self) -> tuple[ToolSchema, ...]:
        """What to pass as ``llm.stream(..., tools=)``."""
        return tuple(each.schema for each in self._tools.values())

    async def __aenter__(self) -> ToolBox:
        """Open the task group for tools that outlive a turn. Cancelling it leaves it closed."""
        if self._group is not None:
            raise RuntimeError("this ToolBox is already open")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        """Wait up to ``close_timeout`` s for tools still running, then cancel them. The wait
        runs shielded, so cancelling the exit does not skip it."""
        group, self._group = self._group, None
        assert group is not None
        with anyio.move_on_after(self.close_timeout, shield=True):
            while self._running:
                await self._idle.wait()
        group.cancel_scope.cancel()
        return await group.__aexit__(*exc_info)

    def round(self, calls: Sequence[ToolCall]) -> ToolRound:
        """A handle for the calls of one model response (nothing runs until ``run()``)."""
        self._group_or_raise()
        return ToolRound(self, calls)

    async def run(self, calls: Sequence[ToolCall]) -> tuple[ToolResult, ...]:
        """``round(calls).run()``: for callers that keep no history. Cancelling it: see
        `ToolRound.run` (the results of cancelled calls are then only on the round)."""
        return await self.round(calls).run()

    def _group_or_raise(self) -> anyio.abc.TaskGroup:
        if self._group is None:
            raise RuntimeError(
                "the ToolBox is not open: use `async with ToolBox([...]) as toolbox:` around "
                "the conversation"
            )
        return self._group

    def _prepare(self, call: ToolCall) -> tuple[Tool[..., Any], dict[str, Any]] | ToolResult:
        chosen = self._tools.get(call.name)
        if chosen is None:
            known = ", ".join(self._tools) or "none"
            return ToolResult.failure(
                call, "unknown_tool", f"there is no tool named {call.name!r} (tools: {known})"
            )
        prepared = chosen.prepare(call.arguments)
        if isinstance(prepared, tuple):
            kind, message = prepared
            log.warning("tool call %s rejected: %s", call.name, message)
            return ToolResult.failure(call, kind, message)
        if not chosen.cancel_on_interruption:
            self._running += 1
            if self._running == 1:
                self._idle = anyio.Event()
        return chosen, prepared

    def _kept_finished(self) -> None:
        self._running -= 1
        if self._running == 0:
            self._idle.set()


def _success(call: ToolCall, value: Any, seconds: float) -> ToolResult:
    if isinstance(value, str):
        return ToolResult(call, "ok", value, value, seconds)
    try:
        content = json.dumps(value, default=_to_json, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        log.warning("tool %s returned a value that is not JSON: %s", call.name, exc)
        return ToolResult.failure(
            call,
            "error",
            f"the tool returned a value that cannot be sent as JSON ({exc})",
            value=value,
            seconds=seconds,
        )
    return ToolResult(call, "ok", content, value, seconds)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class InvalidHistory(ValueError):
    """The conversation breaks the tool-call rule: every assistant tool call is answered by
    exactly one tool message with its id, right after it. A bug in whoever built the history."""


def append_tool_round(
    history: MutableSequence[ChatMessage], round: ToolRound, text: str = ""
) -> None:
    """Append the assistant message (``text`` + the round's calls) and one tool message per call.

    Call it before ``round.run()``: the tool messages then hold each result as it lands (and
    "pending" / "cancelled" meanwhile), so the history is valid whatever happens to the turn.
    """
    history.extend(round.messages(text))


def check_history(messages: Sequence[ChatMessage]) -> None:
    """Raise `InvalidHistory` unless every assistant tool call is answered by exactly one tool
    message with its id, among the tool messages that directly follow it, and no tool message
    answers anything else."""
    open_ids: set[str] = set()
    for n, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in open_ids:
                raise InvalidHistory(
                    f"message {n}: a tool message for {message.tool_call_id!r}, which no "
                    "preceding assistant tool call is waiting for (see agent.tools."
                    "append_tool_round)"
                )
            open_ids.discard(message.tool_call_id)
            continue
        if open_ids:
            raise InvalidHistory(
                f"message {n}: tool call(s) {sorted(open_ids)} have no tool message; answer "
                "every call right after its assistant message (agent.tools.append_tool_round)"
            )
        if message.role == "assistant" and message.tool_calls:
            ids = [call.id for call in message.tool_calls]
            if len(set(ids)) != len(ids):
                raise InvalidHistory(f"message {n}: repeated tool call ids {ids!r}")
            open_ids = set(ids)
    if open_ids:
        raise InvalidHistory(
            f"the history ends with tool call(s) {sorted(open_ids)} unanswered "
            "(agent.tools.append_tool_round)"
        )


@dataclass(frozen=True, slots=True)
class ToolsStarted:
    """The model called tools: ``text`` is what it said before the calls (already yielded);
    the round is recorded in the history and about to run."""

    round: ToolRound
    text: str


@dataclass(frozen=True, slots=True)
class ToolsFinished:
    """Every call of the round has its result (in the history too); the follow-up streams next."""

    round: ToolRound


#: What `reply_with_tools` yields: the reply's text as it arrives, and the tool rounds' edges.
ReplyChunk = TextDelta | ToolsStarted | ToolsFinished


async def reply_with_tools(
    llm: LLM,
    history: MutableSequence[ChatMessage],
    toolbox: ToolBox | None,
    *,
    max_rounds: int = 4,
    record_reply: bool = True,
) -> AsyncGenerator[ReplyChunk, None]:
    """One agent reply with tool rounds: the text of every round as it arrives, and each
    round's `ToolsStarted` / `ToolsFinished` around its run (a turn flushes the text said before
    the calls at the first, and may speak a filler while it waits for the second).

    Streams with the toolbox's tools; when the model calls tools, records the round in
    ``history`` (`append_tool_round`), runs it and streams the follow-up, up to ``max_rounds``
    rounds (the last request offers no tools, so the model answers in words). With
    ``record_reply`` the final text is appended as an assistant message when the reply
    completes (a voice turn passes False: it records what was heard). Without a toolbox, no
    tools are offered and calls the model makes anyway are dropped with a warning.

    Cancelling the consumer (or closing the generator) mid-round cancels the interruptible
    tools and leaves the history valid; the final text is then not appended.
    """
    for round_number in range(max_rounds + 1):
        parts: list[str] = []
        calls: list[ToolCall] = []
        offered = toolbox is not None and round_number < max_rounds
        tools = toolbox.schemas if offered and toolbox is not None else ()
        async with aclosing(llm.stream(history, tools=tools)) as stream:
            async for chunk in stream:
                if isinstance(chunk, TextDelta):
                    parts.append(chunk.text)
                    yield chunk
                else:
                    calls.append(chunk)
        text = "".join(parts)
        if calls and toolbox is None:
            log.warning("the model called %s, but this agent has no tools", [c.name for c in calls])
            calls = []
        if not calls:
            if text and record_reply:
                history.append(ChatMessage("assistant", text))
            return
        assert toolbox is not None
        pending = toolbox.round(calls)
        append_tool_round(history, pending, text)
        yield ToolsStarted(pending, text)
        await pending.run()
        yield ToolsFinished(pending)
