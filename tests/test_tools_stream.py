"""Streamed tool calls through OpenAILLM against ScriptedChatServer (a fake OpenAI-compatible
server over real loopback HTTP): reassembly, the follow-up request, text-written calls, and
models that cannot call tools."""

from __future__ import annotations

import json
import logging
import time
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from agent.errors import LLMStreamError, LLMTimeoutError
from agent.interfaces import ChatMessage, LLMChunk, TextDelta, ToolCall
from agent.tools import ToolBox, check_history, reply_with_tools, tool
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import (
    Drop,
    ScriptedChatServer,
    Stall,
    StreamReply,
    Token,
    ToolDelta,
    tokens,
    tool_call_reply,
)

pytestmark = pytest.mark.anyio

SYSTEM = ChatMessage("system", "You are a travel agent. Be brief.")
ASK = ChatMessage("user", "Weather in Oslo and Rome?")
OSLO = ("call_oslo", "get_weather", '{"city": "Oslo", "unit": "C"}')
ROME = ("call_rome", "get_weather", '{"city": "Rome"}')


@tool
async def get_weather(city: str, unit: str = "C") -> dict[str, Any]:
    """The current weather in a city.

    Args:
        city: The city's name.
    """
    return {"city": city, "sky": "clear", "unit": unit}


@tool
async def explode() -> str:
    raise ValueError("the weather service is down")


@tool(timeout=0.1)
async def slow() -> str:
    await anyio.sleep(10)
    return "never"


def open_llm(server: ScriptedChatServer, **options: Any) -> OpenAILLM:
    options.setdefault("inter_token_timeout", 5.0)
    return OpenAILLM("scripted", base_url=server.base_url, backoff_base=0.01, **options)


async def collect(llm: OpenAILLM, history: list[ChatMessage], **kw: Any) -> list[LLMChunk]:
    async with aclosing(llm.stream(history, **kw)) as stream:
        return [chunk async for chunk in stream]


async def test_interleaved_fragments_of_parallel_calls_are_reassembled() -> None:
    reply = tool_call_reply(OSLO, ROME, text=["Let me ", "check."], pieces=4, interleave=True)
    fragments = [s for s in reply.steps if isinstance(s, ToolDelta)]
    assert [f.index for f in fragments][:6] == [0, 1, 0, 1, 0, 1], "the script interleaves"
    async with ScriptedChatServer([reply]) as server, open_llm(server) as llm:
        chunks = await collect(llm, [SYSTEM, ASK], tools=[get_weather.schema])
    assert chunks == [
        TextDelta("Let me "),
        TextDelta("check."),
        ToolCall(*OSLO),
        ToolCall(*ROME),
    ]
    body = server.chat_requests[0].body
    assert body["tools"] == [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": get_weather.parameters,
        },
    }]
    assert body["messages"][0] == {"role": "system", "content": SYSTEM.content}


async def test_text_streams_at_once_and_calls_come_whole_at_finish() -> None:
    steps = (Token("One moment."), *tool_call_reply(OSLO, delay=0.1).steps)
    reply = StreamReply(steps, finish_reason="tool_calls")
    seen: list[tuple[LLMChunk, float]] = []
    async with ScriptedChatServer([reply]) as server, open_llm(server) as llm:
        async with aclosing(llm.stream([ASK], tools=[get_weather.schema])) as stream:
            async for chunk in stream:
                seen.append((chunk, time.monotonic()))
    request = server.chat_requests[0]
    first_fragment_sent = request.step_times[1]
    (text, text_at), (whole, call_at) = seen
    assert text == TextDelta("One moment.") and text_at < first_fragment_sent
    assert whole == ToolCall(*OSLO)
    assert request.finished_at is not None and call_at >= request.finished_at


async def test_the_follow_up_carries_the_calls_and_one_tool_message_per_id() -> None:
    script = [
        tool_call_reply(OSLO, ROME, text=["Checking. "], interleave=True),
        tokens("Oslo and Rome ", "are both clear."),
    ]
    history = [SYSTEM, ASK]
    async with (
        ScriptedChatServer(script) as server,
        open_llm(server) as llm,
        ToolBox([get_weather]) as box,
    ):
        async with aclosing(reply_with_tools(llm, history, box)) as reply:
            spoken = [d.text async for d in reply if isinstance(d, TextDelta)]
    assert spoken == ["Checking. ", "Oslo and Rome ", "are both clear."]
    first, follow_up = server.chat_requests
    assert follow_up.messages == [
        {"role": "system", "content": SYSTEM.content},
        {"role": "user", "content": ASK.content},
        {
            "role": "assistant",
            "content": "Checking. ",
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in (OSLO, ROME)
            ],
        },
        {"role": "tool", "tool_call_id": "call_oslo",
         "content": json.dumps({"city": "Oslo", "sky": "clear", "unit": "C"})},
        {"role": "tool", "tool_call_id": "call_rome",
         "content": json.dumps({"city": "Rome", "sky": "clear", "unit": "C"})},
    ]
    assert follow_up.body["tools"] == first.body["tools"]
    check_history(history)
    assert history[-1] == ChatMessage("assistant", "Oslo and Rome are both clear.")


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        ("explode", "{}", "ValueError: the weather service is down"),
        ("slow", "{}", "timed out after 0.1 s"),
        ("get_weather", '{"city": ', "not valid JSON"),
        ("get_weather", '{"city": 12}', "city: expected a string, got 12"),
    ],
)
async def test_a_failed_call_is_answered_with_its_error(
    name: str, arguments: str, error: str
) -> None:
    script = [tool_call_reply(("c1", name, arguments)), tokens("Sorry, that failed.")]
    history = [ASK]
    async with (
        ScriptedChatServer(script) as server,
        open_llm(server) as llm,
        ToolBox([get_weather, explode, slow]) as box,
    ):
        async with aclosing(reply_with_tools(llm, history, box)) as reply:
            spoken = [d.text async for d in reply if isinstance(d, TextDelta)]
    assert spoken == ["Sorry, that failed."]
    tool_message = server.chat_requests[1].messages[-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "c1"
    assert error in json.loads(tool_message["content"])["error"]


async def test_a_call_without_an_id_gets_one_that_the_follow_up_uses() -> None:
    reply = StreamReply(
        (ToolDelta(0, None, "get_weather", '{"city": "Oslo"}'),), finish_reason="tool_calls"
    )
    history = [ASK]
    async with (
        ScriptedChatServer([reply, tokens("Clear.")]) as server,
        open_llm(server) as llm,
        ToolBox([get_weather]) as box,
    ):
        async with aclosing(reply_with_tools(llm, history, box)) as stream:
            assert [d.text async for d in stream if isinstance(d, TextDelta)] == ["Clear."]
    assistant, answer = server.chat_requests[1].messages[1:3]
    call_id = assistant["tool_calls"][0]["id"]
    assert call_id.startswith("call_") and answer["tool_call_id"] == call_id


async def test_rounds_stop_after_max_rounds_with_a_request_offering_no_tools() -> None:
    script = [tool_call_reply(OSLO), tool_call_reply(ROME), tokens("Done.")]
    history = [ASK]
    async with (
        ScriptedChatServer(script) as server,
        open_llm(server) as llm,
        ToolBox([get_weather]) as box,
    ):
        async with aclosing(reply_with_tools(llm, history, box, max_rounds=2)) as stream:
            assert [d.text async for d in stream if isinstance(d, TextDelta)] == ["Done."]
    assert ["tools" in r.body for r in server.chat_requests] == [True, True, False]
    check_history(history)


async def test_a_stall_between_fragments_is_an_inter_token_timeout() -> None:
    reply = StreamReply((ToolDelta(0, "c1", "get_weather", '{"ci'), Stall(30)))
    async with ScriptedChatServer([reply]) as server, open_llm(
        server, inter_token_timeout=0.3
    ) as llm:
        with pytest.raises(LLMTimeoutError) as caught:
            await collect(llm, [ASK], tools=[get_weather.schema])
    assert caught.value.phase == "inter_token"
    assert len(server.chat_requests) == 1, "the model had started: not retried"


@pytest.mark.parametrize(
    "broken",
    [
        StreamReply((ToolDelta(0, "c1", "get_weather", '{"city"'), Drop())),
        StreamReply((ToolDelta(0, "c1", None, "{}"),), finish_reason="tool_calls"),
    ],
    ids=["dropped-mid-call", "call-without-a-name"],
)
async def test_a_broken_tool_call_stream_is_a_typed_error_and_no_half_call(
    broken: StreamReply,
) -> None:
    received: list[LLMChunk] = []
    async with ScriptedChatServer([broken]) as server, open_llm(server) as llm:
        with pytest.raises(LLMStreamError):
            async with aclosing(llm.stream([ASK], tools=[get_weather.schema])) as stream:
                async for chunk in stream:
                    received.append(chunk)
    assert received == []


CALL_TEXT = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["  {\"name\": \"get_", "weather\", \"arguments\": {\"city\": \"Oslo\"}}"],
         [("get_weather", '{"city": "Oslo"}')]),
        (["```json\n", CALL_TEXT, "\n```"], [("get_weather", '{"city": "Oslo"}')]),
        (["<tool_", "call>", CALL_TEXT, "</tool_call>\n<tool_call>",
          '{"name": "get_weather", "parameters": {"city": "Rome"}}</tool_call>'],
         [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Rome"}')]),
        ([f"[{CALL_TEXT}]"], [("get_weather", '{"city": "Oslo"}')]),
        (['{"name": "teleport", "arguments": {}}'], '{"name": "teleport", "arguments": {}}'),
        (["{curly", " braces} are fun"], "{curly braces} are fun"),
        (["It is ", "{sunny}."], ["It is ", "{sunny}."]),
    ],
    ids=["bare", "fenced", "tagged", "list", "unknown-tool", "not-json", "plain-text"],
)
async def test_calls_written_as_text_are_parsed_only_when_asked(
    pieces: list[str], expected: Any
) -> None:
    async with ScriptedChatServer([tokens(*pieces)]) as server:
        async with open_llm(server, text_tool_calls=True) as llm:
            chunks = await collect(llm, [ASK], tools=[get_weather.schema])
        async with open_llm(server) as llm:
            by_default = await collect(llm, [ASK], tools=[get_weather.schema])
    assert by_default == [TextDelta(p) for p in pieces], "off by default: text stays text"
    if isinstance(expected, str):
        assert chunks == [TextDelta(expected)], "not a call: released whole as text"
    elif isinstance(expected[0], str):
        assert chunks == [TextDelta(p) for p in expected], "plain text is not held back"
    else:
        assert all(isinstance(c, ToolCall) for c in chunks)
        assert [(c.name, c.arguments) for c in chunks if isinstance(c, ToolCall)] == expected


async def test_a_model_that_cannot_call_tools_is_not_offered_them_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with ScriptedChatServer([tokens("It is sunny.")]) as server, open_llm(
        server, can_call_tools=False
    ) as llm:
        for _ in range(2):
            assert await collect(llm, [ASK], tools=[get_weather.schema]) == [
                TextDelta("It is sunny.")
            ]
    assert all("tools" not in r.body for r in server.chat_requests)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "cannot call tools" in warnings[0] and "get_weather" in warnings[0]
    assert "OPENAI_BASE_URL" in warnings[0]


async def test_tool_warning_is_the_start_up_line_for_the_composition_root(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with ScriptedChatServer([tokens("ok")]) as server:
        local = open_llm(server, can_call_tools=False)
        assert local.tool_warning([]) is None
        line = local.tool_warning([get_weather.schema])
        assert line is not None and "cannot call tools" in line
        async with local:
            await collect(local, [ASK], tools=[get_weather.schema])
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "said once"
        assert open_llm(server).tool_warning([get_weather.schema]) is None


async def test_history_with_tool_calls_is_written_as_text_for_a_model_without_tools() -> None:
    history = [
        ASK,
        ChatMessage("assistant", "", tool_calls=(ToolCall(*OSLO),)),
        ChatMessage("tool", '{"sky": "clear"}', tool_call_id="call_oslo"),
    ]
    async with ScriptedChatServer([tokens("Clear.")]) as server, open_llm(
        server, can_call_tools=False
    ) as llm:
        await collect(llm, history)
    assert server.chat_requests[0].messages[1:] == [
        {"role": "assistant",
         "content": '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}'},
        {"role": "user", "content": '[get_weather returned] {"sky": "clear"}'},
    ]
