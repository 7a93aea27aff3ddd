"""ToolBox: one result per call, whatever the tool does; cancellation both ways; the history."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest

from agent.interfaces import ChatMessage, ToolCall
from agent.tools import (
    INTERRUPTED,
    InvalidHistory,
    ToolBox,
    ToolContext,
    ToolResult,
    append_tool_round,
    check_history,
    tool,
)

pytestmark = pytest.mark.anyio


@dataclass
class Weather:
    city: str
    celsius: float


@tool
async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> Weather:
    """The current weather in a city."""
    return Weather(city, 21.5 if unit == "C" else 70.7)


@tool
def add(a: int, b: float) -> float:
    """Add two numbers (a sync tool: runs in a worker thread)."""
    assert threading.current_thread() is not threading.main_thread()
    return a + b


@tool
async def explode(reason: str) -> str:
    raise RuntimeError(f"boom: {reason}")


@tool(timeout=0.1)
async def slow(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "finally"


@tool(timeout=0.1)
def slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "finally"


def call(name: str, arguments: Any, call_id: str | None = None) -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return ToolCall(call_id or f"call_{name}", name, text)


async def test_values_come_back_as_json_in_call_order() -> None:
    calls = [call("get_weather", {"city": "Oslo"}), call("add", {"a": 2, "b": 0.5}),
             call("get_weather", {"city": "Rome", "unit": "F"}, "call_2")]
    async with ToolBox([get_weather, add]) as box:
        results = await box.run(calls)
    assert [r.call for r in results] == calls
    assert all(r.ok and not r.late for r in results)
    assert json.loads(results[0].content) == {"city": "Oslo", "celsius": 21.5}
    assert results[0].value == Weather("Oslo", 21.5)
    assert results[1].content == "2.5"
    assert json.loads(results[2].content) == {"city": "Rome", "celsius": 70.7}


async def test_a_string_result_is_sent_as_is() -> None:
    @tool
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    async with ToolBox([greet]) as box:
        [result] = await box.run([call("greet", {"name": "Ada"})])
    assert result.content == "Hello, Ada!"


@pytest.mark.parametrize(
    ("bad", "kind", "says"),
    [
        (call("get_weather", '{"city": "Oslo"'), "bad_json", "not valid JSON"),
        (call("get_weather", {"town": "Oslo"}), "invalid_arguments", "city: missing"),
        (call("get_weather", {"city": "Oslo", "unit": "K"}), "invalid_arguments",
         "unit: 'K' is not one of 'C', 'F'"),
        (call("add", {"a": "2", "b": 1}), "invalid_arguments", "a: expected an integer"),
        (call("teleport", {}), "unknown_tool", "no tool named 'teleport'"),
        (call("explode", {"reason": "test"}), "error", "RuntimeError: boom: test"),
        (call("slow", {"seconds": 5}), "timeout", "timed out after 0.1 s"),
        (call("slow_sync", {"seconds": 0.5}), "timeout", "timed out after 0.1 s"),
    ],
)
async def test_every_failure_is_one_error_result_the_model_can_read(
    bad: ToolCall, kind: str, says: str
) -> None:
    good = call("get_weather", {"city": "Oslo"}, "good")
    started = time.monotonic()
    async with ToolBox([get_weather, add, explode, slow, slow_sync]) as box:
        results = await box.run([bad, good])
    assert time.monotonic() - started < 1.0, "a slow tool is cut at its timeout"
    failed, fine = results
    assert failed.kind == kind and not failed.ok
    assert says in json.loads(failed.content)["error"]
    assert fine.ok, "one bad call does not spoil the others"


async def test_a_value_that_is_not_json_is_an_error_result() -> None:
    @tool
    def opaque() -> object:
        return object()

    async with ToolBox([opaque]) as box:
        [result] = await box.run([call("opaque", {})])
    assert result.kind == "error" and "cannot be sent as JSON" in result.content


async def test_interruption_cancels_a_tool_and_records_the_cancellation() -> None:
    started = anyio.Event()

    @tool
    async def search(query: str) -> str:
        started.set()
        await anyio.sleep(30)
        return "never"

    history: list[ChatMessage] = [ChatMessage("user", "find flights")]
    async with ToolBox([search, get_weather]) as box:
        calls = [call("search", {"query": "flights"}), call("get_weather", {"city": "Oslo"})]
        tool_round = box.round(calls)
        append_tool_round(history, tool_round, "Let me look.")
        check_history(history)  # valid even before anything ran
        with anyio.CancelScope() as turn:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tool_round.run)
                await started.wait()
                turn.cancel()  # barge-in
        assert turn.cancelled_caught, "the cancellation propagated out of run()"
        cancelled, done = tool_round.results
    assert cancelled.kind == "cancelled" and json.loads(cancelled.content) == {
        "error": INTERRUPTED
    }
    assert done.ok
    check_history(history)
    assert [m.role for m in history] == ["user", "assistant", "tool", "tool"]
    assert history[1].tool_calls == tuple(calls) and history[1].content == "Let me look."
    assert history[2].tool_call_id == "call_search" and history[2].content == cancelled.content
    assert history[3].content == done.content


async def test_a_tool_kept_on_interruption_completes_and_its_result_is_recorded() -> None:
    started, release = anyio.Event(), anyio.Event()

    @tool(cancel_on_interruption=False)
    async def send_email(to: str) -> str:
        started.set()
        await release.wait()
        return f"sent to {to}"

    late: list[ToolResult] = []
    history: list[ChatMessage] = [ChatMessage("user", "email Bob")]
    async with ToolBox([send_email], on_late_result=late.append) as box:
        tool_round = box.round([call("send_email", {"to": "bob@example.com"})])
        append_tool_round(history, tool_round)
        with anyio.CancelScope() as turn:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tool_round.run)
                await started.wait()
                turn.cancel()
        assert turn.cancelled_caught and tool_round.interrupted
        [pending] = tool_round.results
        assert pending.kind == "pending" and "still running" in history[-1].content
        check_history(history)  # the next turn may be sent now: the call is answered
        release.set()
        with anyio.fail_after(2):
            [result] = await tool_round.wait_all()
    assert result.ok and result.late and result.content == "sent to bob@example.com"
    assert late == [result]
    assert history[-1].content == "sent to bob@example.com", "recorded in the history"


async def test_leaving_the_toolbox_waits_for_kept_tools_then_cancels_them() -> None:
    @tool(cancel_on_interruption=False, timeout=None)
    async def forever() -> str:
        await anyio.sleep(60)
        return "never"

    box = ToolBox([forever], close_timeout=0.2)
    started = time.monotonic()
    async with box:
        tool_round = box.round([call("forever", {})])
        with anyio.move_on_after(0.05):
            await tool_round.run()
    assert 0.2 <= time.monotonic() - started < 1.5
    [result] = tool_round.results
    assert result.kind == "cancelled" and "agent shut down" in result.content


async def test_tools_receive_the_context_they_ask_for() -> None:
    ended: list[str] = []

    class Agent:
        def end_call(self, reason: str) -> None:
            ended.append(reason)

    @tool
    def end_call(context: ToolContext, reason: str) -> str:
        """End the call (the hook for a built-in end_call)."""
        context.state.end_call(reason)
        return f"ending ({context.call.id})"

    async with ToolBox(context=Agent()) as box:
        box.add(end_call)
        assert [s.name for s in box.schemas] == ["end_call"]
        [result] = await box.run([call("end_call", {"reason": "bye"}, "c9")])
    assert result.content == "ending (c9)" and ended == ["bye"]


async def test_a_toolbox_must_be_open_and_tool_names_unique() -> None:
    box = ToolBox([get_weather])
    with pytest.raises(RuntimeError, match="async with ToolBox"):
        box.round([call("get_weather", {"city": "Oslo"})])
    with pytest.raises(ValueError, match="already"):
        box.add(get_weather)
    async with box:
        with pytest.raises(ValueError, match="unique"):
            box.round([call("get_weather", {}, "same"), call("get_weather", {}, "same")])


def test_check_history_names_the_broken_rule() -> None:
    calls = (ToolCall("a", "f", "{}"), ToolCall("b", "f", "{}"))
    asked = ChatMessage("assistant", "", tool_calls=calls)
    answer_a = ChatMessage("tool", "1", tool_call_id="a")
    answer_b = ChatMessage("tool", "2", tool_call_id="b")
    check_history([ChatMessage("user", "hi"), asked, answer_b, answer_a])
    with pytest.raises(InvalidHistory, match=r"\['b'\] have no tool message"):
        check_history([asked, answer_a, ChatMessage("user", "hi")])
    with pytest.raises(InvalidHistory, match="ends with tool call"):
        check_history([asked, answer_a])
    with pytest.raises(InvalidHistory, match="which no preceding"):
        check_history([asked, answer_a, answer_b, answer_a])
    with pytest.raises(InvalidHistory, match="which no preceding"):
        check_history([answer_a])
