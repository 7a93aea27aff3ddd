"""The turn pipeline over real sockets: LLM stream -> chunker -> TTS socket -> output.

The TTS side is always our real local server with the piper voice. The LLM side is either the
real local llama.cpp server (marked `engines`) or `ScriptedChatServer`, a fake named so, that
scripts timelines and faults a real model cannot produce on demand.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent.errors import LLMError, LLMTimeoutError
from agent.file_output import WavFileOutput
from agent.interfaces import ChatMessage, LLMChunk, ToolSchema
from agent.session import FIRST_CLAUSE_MAX_WORDS, Session
from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.scripted_llm import (
    ErrorEvent,
    ScriptedChatServer,
    Stall,
    StreamReply,
    Token,
    tokens,
)

pytestmark = pytest.mark.anyio


class WireLog:
    """Every frame our client writes or reads, with its time."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, float, str]] = []

    def __call__(self, direction: str, when: float, frame: str) -> None:
        self.frames.append((direction, when, frame))

    def sent(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, json.loads(f)) for d, t, f in self.frames if d == "out"]


class RecordingLLM:
    """Wraps a real LLM and records when its stream ended (not a fake: it forwards)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ended_at: list[float] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSchema] = ()
    ) -> AsyncIterator[LLMChunk]:
        try:
            async for chunk in self.inner.stream(messages, tools=tools):
                yield chunk
        finally:
            self.ended_at.append(time.monotonic())


def text_frames(
    sent: list[tuple[float, dict[str, Any]]], ctx: str
) -> list[tuple[float, dict[str, Any]]]:
    return [(t, m) for t, m in sent if m.get("context_id") == ctx]


def check_turn_wire(sent: list[tuple[float, dict[str, Any]]], ctx: str) -> tuple[float, float]:
    """The frames of one context obey the rules; returns (first text time, last flush time)."""
    frames = text_frames(sent, ctx)
    assert frames[0][1]["text"] == " ", "a context starts with its init"
    body = frames[1:]
    flushes = [i for i, (_, m) in enumerate(body) if m.get("flush")]
    texts = [i for i, (_, m) in enumerate(body) if m.get("text")]
    assert 1 <= len(flushes) <= 2, f"the first clause's flush and the last, got {len(flushes)}"
    assert texts and max(texts) < flushes[-1], "the last flush comes after the last text"
    if len(flushes) == 2:  # the first clause's: after a clause end, or its fifth word
        said = "".join(m.get("text", "") for _, m in body[: flushes[0]])
        ends_clause = said.rstrip()[-1:] in set(".!?…,;:")
        assert ends_clause or len(said.split()) == FIRST_CLAUSE_MAX_WORDS, (
            f"an early flush after {said!r}"
        )
    flushes = flushes[-1:]
    for _, m in body:
        if "text" in m and not m.get("flush"):
            assert m["text"].strip(), f"empty or blank text reached the socket: {m!r}"
            assert m["text"].endswith(" "), f"text must end with a space: {m!r}"
    assert body[-1][1] == {"context_id": ctx, "close_context": True}, "the context is closed last"
    return body[texts[0]][0], body[flushes[0]][0]


@pytest.mark.engines
async def test_real_local_llm_turn_streams_into_the_socket(
    piper_engine: Any, tmp_path: Path
) -> None:
    from plugins.local.llm_server import LocalLLMServer

    wire = WireLog()
    async with LocalLLMServer() as llm_server, LocalTTSServer(piper_engine) as tts_server:
        openai_llm = OpenAILLM("smollm2", base_url=llm_server.base_url, max_tokens=60)
        llm = RecordingLLM(openai_llm)
        output = WavFileOutput(16000, tmp_path)
        async with (
            openai_llm,
            ElevenLabsTTS(
                TTSConfig(output_format="pcm_16000"), base_url=tts_server.url, frame_listener=wire
            ) as tts,
        ):
            session = Session(
                llm,
                tts,
                output,
                instructions="You are a helpful assistant. Answer in two sentences.",
            )
            result = await session.respond("Tell me about the moon.")
            first_text, flush_at = check_turn_wire(wire.sent(), "ctx-1")
            assert result.error is None and not result.interrupted
            assert output.samples_played / 16000 > 1.0, "the turn produced speech"
            assert first_text < llm.ended_at[0], "text went out before the LLM stream ended"
            assert flush_at >= llm.ended_at[0] - 0.001
            assert result.latency_ms("ttft") is not None and result.latency_ms("ttfb") is not None
            assert session.history[-1].role == "assistant"
            assert (
                session.history[-1].content == result.agent_text.strip()
                or session.history[-1].content
            )
            # a second turn on the same warm socket
            await session.respond("And the sun?")
            check_turn_wire(wire.sent(), "ctx-2")


async def run_scripted(
    piper_engine: Any, replies: list[Any], prompts: list[str], tmp_path: Path, **llm_kw: Any
) -> tuple[Session, list[Any], WireLog, ScriptedChatServer]:
    wire = WireLog()
    results = []
    async with ScriptedChatServer(replies) as fake, LocalTTSServer(piper_engine) as tts_server:
        llm = OpenAILLM("scripted", base_url=fake.base_url, **llm_kw)
        async with (
            llm,
            ElevenLabsTTS(
                TTSConfig(output_format="pcm_16000"), base_url=tts_server.url, frame_listener=wire
            ) as tts,
        ):
            session = Session(llm, tts, WavFileOutput(16000, tmp_path))
            for prompt in prompts:
                with anyio.fail_after(30):
                    results.append(await session.respond(prompt))
    return session, results, wire, fake


async def test_llm_error_mid_turn_keeps_what_was_spoken_and_next_turn_works(
    piper_engine: Any, tmp_path: Path
) -> None:
    failing = StreamReply(
        (Token("The first part "), Token("was said. "), ErrorEvent("boom")), finish=False
    )
    session, results, wire, _ = await run_scripted(
        piper_engine, [failing, tokens("All ", "good ", "now.")], ["one", "two"], tmp_path
    )
    first, second = results
    assert isinstance(first.cause, LLMError)
    assert first.heard_text == "The first part was said."
    assert second.error is None and second.heard_text == "All good now."
    assert [m.content for m in session.history if m.role == "assistant"] == [
        "The first part was said.",
        "All good now.",
    ]
    check_turn_wire(wire.sent(), "ctx-1")
    check_turn_wire(wire.sent(), "ctx-2")


async def test_empty_and_none_deltas_never_reach_the_socket(
    piper_engine: Any, tmp_path: Path
) -> None:
    reply = tokens("Hel", None, "", "lo", " ", "", " there", None, "!", "")
    _, results, wire, _ = await run_scripted(piper_engine, [reply], ["hi"], tmp_path)
    assert results[0].heard_text == "Hello there!"
    check_turn_wire(wire.sent(), "ctx-1")
    assert [m["text"] for _, m in text_frames(wire.sent(), "ctx-1")[1:] if m.get("text")] == [
        "Hello ",
        "there! ",
    ]


async def test_stalled_stream_times_out_and_keeps_the_spoken_part(
    piper_engine: Any, tmp_path: Path
) -> None:
    stalled = StreamReply((Token("Before the stall "), Stall(30)), finish=False)
    started = time.monotonic()
    _session, results, wire, _ = await run_scripted(
        piper_engine,
        [stalled, tokens("Recovered.")],
        ["one", "two"],
        tmp_path,
        inter_token_timeout=0.5,
    )
    assert isinstance(results[0].cause, LLMTimeoutError)
    assert results[0].heard_text == "Before the stall"
    assert results[1].heard_text == "Recovered."
    assert time.monotonic() - started < 25
    check_turn_wire(wire.sent(), "ctx-1")


async def test_words_go_out_as_they_form_not_whole_sentences(
    piper_engine: Any, tmp_path: Path
) -> None:
    reply = tokens("One", " two", " thr", "ee", " four.", delay=0.05)
    _, _, wire, _ = await run_scripted(piper_engine, [reply], ["count"], tmp_path)
    texts = [m["text"] for _, m in text_frames(wire.sent(), "ctx-1")[1:] if m.get("text")]
    assert texts == ["One ", "two ", "three ", "four. "]
