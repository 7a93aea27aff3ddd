"""Turns with tools, over real sockets: the scripted OpenAI-compatible server (a named fake)
calls tools over real HTTP, the real TTS client talks to our real TTS server (with the tone
engine, a named fake, for speed), and the real Session runs the rounds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from agent import ToolCalled, ToolFinished, tool
from agent.conversation import TurnRecord
from agent.events import Event
from agent.file_output import MemoryOutput
from agent.session import Session
from agent.tools import ToolBox, check_history
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.engines import FakeToneEngine
from tests.fakes.scripted_llm import ScriptedChatServer, StreamReply, tokens, tool_call_reply
from tests.faults.support import WireLog, eventually

pytestmark = pytest.mark.anyio

OSLO = ("call_oslo", "get_weather", json.dumps({"city": "Oslo"}))


@tool
async def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
        city: The city's name.
    """
    await anyio.sleep(0.2)
    return f"{city}: clear, 12 degrees"


@tool
async def slow_lookup(city: str) -> str:
    """A lookup that takes a while."""
    await anyio.sleep(1.2)
    return f"{city}: found"


@tool(cancel_on_interruption=False)
async def book_table(city: str) -> str:
    """Book a table (a side effect: always runs to completion)."""
    await anyio.sleep(0.6)
    return f"booked in {city}"


@dataclass
class Rig:
    session: Session
    server: ScriptedChatServer
    wire: WireLog
    box: ToolBox
    events: list[Event] = field(default_factory=list)


@asynccontextmanager
async def rig(
    script: list[StreamReply], *tools: Any, filler_delay: float = 5.0
) -> AsyncIterator[Rig]:
    wire = WireLog()
    records: dict[str, TurnRecord] = {}
    holder: list[Session] = []

    def late(result: Any) -> None:  # as the Conversation does: record it, do not speak it
        holder[0].late_result(records["turn"], result)

    async with (
        ScriptedChatServer(script) as server,
        LocalTTSServer(FakeToneEngine()) as tts_server,
        OpenAILLM("scripted", base_url=server.base_url) as llm,
        ElevenLabsTTS(
            TTSConfig(output_format="pcm_16000"), base_url=tts_server.url, frame_listener=wire
        ) as tts,
        ToolBox(tools, on_late_result=late) as box,
    ):
        events: list[Event] = []
        session = Session(
            llm,
            tts,
            MemoryOutput(),
            instructions="You help.",
            toolbox=box,
            tool_filler_delay=filler_delay,
            on_event=events.append,
        )
        holder.append(session)
        setup = Rig(session, server, wire, box, events)
        setup.session.respond = _remembering(session, records)  # type: ignore[method-assign]
        yield setup


def _remembering(session: Session, records: dict[str, TurnRecord]) -> Any:
    respond = session.respond

    async def wrapped(text: str, record: TurnRecord | None = None, **kw: Any) -> TurnRecord:
        records["turn"] = record = record or TurnRecord(session.turns + 1)
        return await respond(text, record, **kw)

    return wrapped


def texts(wire: WireLog, context: str) -> list[tuple[float, dict[str, Any]]]:
    return [
        (when, json.loads(frame))
        for direction, when, frame in wire.frames
        if direction == "out" and json.loads(frame).get("context_id") == context
    ]


async def test_text_before_the_calls_is_flushed_before_the_follow_up_request() -> None:
    script = [tool_call_reply(OSLO, text=["Let me check. "]), tokens("Oslo is ", "clear.")]
    async with rig(script, get_weather) as r:
        record = await r.session.respond("What is the weather in Oslo?")
    frames = texts(r.wire, "ctx-1")
    flushes = [when for when, m in frames if m.get("flush")]
    follow_up = r.server.chat_requests[1]
    assert len(flushes) == 2, "one flush for the text before the tools, one at the end"
    assert flushes[0] < follow_up.received_at, "the pre-tool text was flushed before the follow-up"
    spoken = "".join(m["text"] for _, m in frames if m.get("text", "").strip())
    assert spoken.split() == ["Let", "me", "check.", "Oslo", "is", "clear."]
    # the follow-up carries the call and its one tool message with the real result
    assistant, tool_message = follow_up.messages[-2:]
    assert assistant["tool_calls"][0]["id"] == "call_oslo"
    assert tool_message == {
        "role": "tool",
        "tool_call_id": "call_oslo",
        "content": "Oslo: clear, 12 degrees",
    }
    check_history(r.session.history)
    roles = [m.role for m in r.session.history]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert r.session.history[2].content == "Let me check. "
    assert r.session.history[-1].content == "Oslo is clear."
    assert record.heard_text == "Let me check. Oslo is clear."
    (entry,) = record.tools
    assert (entry.name, entry.outcome, entry.spoken) == ("get_weather", "ok", True)
    assert entry.seconds is not None and 0.15 < entry.seconds < 1.0
    kinds = [type(e) for e in r.events if isinstance(e, ToolCalled | ToolFinished)]
    assert kinds == [ToolCalled, ToolFinished]
    assert record.latency_ms("tools") is not None


async def test_a_slow_tool_gets_a_filler_while_it_runs() -> None:
    script = [tool_call_reply(("c1", "slow_lookup", '{"city": "Rome"}')), tokens("Found it.")]
    async with rig(script, slow_lookup, filler_delay=0.3) as r:
        record = await r.session.respond("Look up Rome.")
    frames = texts(r.wire, "ctx-1")
    said = [(when, m["text"]) for when, m in frames if m.get("text", "").strip()]
    assert said[0][1].strip() == "One moment."
    assert said[0][0] < r.server.chat_requests[1].received_at
    assert record.heard_text == "One moment. Found it."


async def interrupt_during_tool(r: Rig, question: str) -> TurnRecord:
    """Start a turn, cancel it (a barge-in) once its tool is running."""
    record = TurnRecord(1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(r.session.respond, question, record)
        assert await eventually(lambda: any(isinstance(e, ToolCalled) for e in r.events))
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    return record


async def test_barge_in_cancels_an_interruptible_tool_and_the_history_stays_valid() -> None:
    script = [
        tool_call_reply(("c1", "slow_lookup", '{"city": "Rome"}'), text=["Looking. "]),
        tokens("Hello again."),  # the next request: the interrupted round asks for no follow-up
    ]
    async with rig(script, slow_lookup) as r:
        record = await interrupt_during_tool(r, "Look up Rome.")
        history = list(r.session.history)
        check_history(history)
        tool_message = next(m for m in history if m.role == "tool")
        assert "cancelled because the user interrupted" in tool_message.content
        (entry,) = record.tools
        assert entry.outcome == "cancelled"
        assert record.interrupted and record.heard_text in ("", "Looking.")
        # the next turn sends a valid history with the cancelled call answered
        nxt = await r.session.respond("Hi.")
        assert nxt.heard_text == "Hello again."
        sent = r.server.chat_requests[-1].messages
        assert any(m.get("tool_call_id") == "c1" for m in sent)
        check_history(r.session.history)


async def test_a_side_effecting_tool_finishes_after_a_barge_in_and_is_recorded_not_spoken() -> None:
    script = [
        tool_call_reply(("c1", "book_table", '{"city": "Oslo"}')),
        tokens("Sure."),  # the next turn's reply: the interrupted round asks for no follow-up
    ]
    async with rig(script, book_table) as r:
        record = await interrupt_during_tool(r, "Book a table in Oslo.")
        (entry,) = record.tools
        assert entry.outcome == "pending", "still running after the interruption"
        assert await eventually(lambda: entry.outcome != "pending", limit=5)
        assert (entry.outcome, entry.result, entry.spoken) == ("ok", "booked in Oslo", False)
        tool_message = next(m for m in r.session.history if m.role == "tool")
        assert tool_message.content == "booked in Oslo", "the late result is in the history"
        check_history(r.session.history)
        nxt = await r.session.respond("Thanks.")
    spoken = " ".join(m.get("text", "") for _, m in texts(r.wire, "ctx-1") + texts(r.wire, "ctx-2"))
    assert "booked" not in spoken.lower(), "the late result is not said"
    assert nxt.heard_text == "Sure."
    assert len(r.server.chat_requests) == 2, "no follow-up request for the interrupted round"
