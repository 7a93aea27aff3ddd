"""Fault 1: the TTS socket drops mid-turn with no close frame (and the reverse: a client vanishes).

The TTS side is `ScriptedTTSServer` (a fake, so named): its first connection speaks part of a
turn and then aborts the TCP connection; later connections serve normally. The LLM is
`ScriptedChatServer`; the session, the TTS client and the LLM client are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from agent.session import Session
from plugins.elevenlabs.client import ConnectionLostError, ElevenLabsTTS, TTSConfig, TTSError
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.engines import FakeToneEngine
from tests.fakes.faulty_tts import (
    Abort,
    Expect,
    Pause,
    Respond,
    Script,
    ScriptedTTSServer,
    SendAudio,
    tone_pcm,
)
from tests.fakes.scripted_llm import ScriptedChatServer, tokens
from tests.faults.support import (
    MemoryOutput,
    WireLog,
    assert_turn_closed_on_wire,
    eventually,
    loud_records,
    tracebacks,
)

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
HEARD = "The first part"


async def settle_tasks(baseline: int, limit: float = 5.0) -> int:
    """Wait (bounded) until no more asyncio tasks run than `baseline`; return the count."""
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, limit)
    return len(asyncio.all_tasks())


async def test_socket_dropped_mid_turn_ends_the_turn_and_the_next_turn_reconnects(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: mid-turn (audio already playing, LLM still streaming) the TTS server drops the TCP
    connection without a close frame.

    Pass: the turn ends within 1 s of the drop with a typed ConnectionLostError (a TTSError) in
    `result.error`, not raised; the words already heard are kept in the history; the LLM stream
    is closed; exactly one WARNING-or-louder log line and no traceback; no task is left behind;
    the next turn reconnects (a fresh socket) and speaks normally.
    """
    caplog.set_level(logging.DEBUG)
    heard_pcm = tone_pcm(len(HEARD), 16000)  # 10 ms per character, alignment spread evenly
    first = Script((Expect("text"), SendAudio(heard_pcm, HEARD), Pause(0.2), Abort()))
    slow_reply = tokens(
        "The first ", "part ", "of a ", "long ", "answer ", "goes ", "on.", delay=0.3
    )
    wire = WireLog()
    async with (
        ScriptedTTSServer([first], default=Script((Respond(),))) as fake_tts,
        ScriptedChatServer([slow_reply, tokens("All ", "good ", "now.")]) as fake_llm,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url)
        output = MemoryOutput()
        with anyio.fail_after(20):
            async with (
                llm,
                ElevenLabsTTS(TTSConfig(), base_url=fake_tts.url, frame_listener=wire) as tts,
            ):
                session = Session(llm, tts, output)
                baseline = len(asyncio.all_tasks())
                one = await session.respond("one")
                ended_at = time.monotonic()
                two = await session.respond("two")
                tasks_after = await settle_tasks(baseline)

    aborted_at = fake_tts.connections[0].aborted_at
    assert aborted_at is not None
    assert isinstance(one.cause, ConnectionLostError) and isinstance(one.cause, TTSError)
    assert ended_at - aborted_at < 1.0, "the drop must surface within 1 s"
    assert one.interrupted and one.heard_text == HEARD
    replies = [m for m in session.history if m.role == "assistant"]
    assert [m.content for m in replies] == [HEARD, "All good now."]
    assert replies[0].interrupted and not replies[1].interrupted
    assert fake_llm.chat_requests[0].closed_by_client, "the LLM stream was closed, not leaked"
    assert len(loud_records(caplog)) == 1, [r.getMessage() for r in loud_records(caplog)]
    assert "ended early" in loud_records(caplog)[0].getMessage()
    assert not tracebacks(caplog)

    assert two.error is None and two.heard_text == "All good now."
    assert tts.reconnects == 1 and len(fake_tts.connections) == 2
    assert_turn_closed_on_wire(wire, "ctx-2", spoke=True)
    assert tasks_after <= baseline, "the dead socket's reader and keep-alive tasks ended"
    first_audio = two.at("first_audio_byte")
    assert first_audio is not None
    recovery(
        "TTS socket dropped mid-turn (no close frame)",
        "typed ConnectionLostError, turn ended, heard words kept",
        ended_at - aborted_at,
    )
    recovery(
        "TTS socket dropped mid-turn (no close frame)",
        "next turn on a fresh socket: first audio",
        first_audio - aborted_at,
    )


async def test_socket_dropped_between_turns_is_replaced_quietly(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: the warm TTS socket drops while no turn is running.

    Pass: the next turn opens a fresh socket and speaks with no error and no WARNING (one INFO
    line notes the reconnect).
    """
    caplog.set_level(logging.DEBUG)
    async with (
        ScriptedTTSServer([Script((Pause(0.1), Abort()))]) as fake_tts,
        ScriptedChatServer([tokens("Fresh ", "socket.")]) as fake_llm,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url)
        with anyio.fail_after(20):
            async with llm, ElevenLabsTTS(TTSConfig(), base_url=fake_tts.url) as tts:
                assert await eventually(lambda: tts._socket is not None and not tts._socket.alive)
                result = await Session(llm, tts, MemoryOutput()).respond("hi")
    aborted_at = fake_tts.connections[0].aborted_at
    assert aborted_at is not None
    assert result.error is None and result.heard_text == "Fresh socket."
    assert tts.reconnects == 1
    assert not loud_records(caplog)
    assert any("opening a new one" in r.getMessage() for r in caplog.records)
    first_audio, started = result.at("first_audio_byte"), result.at("llm_request")
    assert first_audio is not None and started is not None
    recovery(
        "TTS socket dropped between turns",
        "next turn reconnects, no error: first audio (from turn start)",
        first_audio - started,
    )


async def test_client_vanishing_mid_turn_leaves_our_server_clean(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault (the reverse direction): a client of our LocalTTSServer drops its TCP connection
    mid-synthesis without a close frame.

    Pass: the server frees the connection (active_connections back to 0) within 2 s, logs no
    ERROR and no traceback, and a concurrent client's turn is unaffected.
    """
    caplog.set_level(logging.DEBUG)
    async with LocalTTSServer(FakeToneEngine()) as server:
        base = f"{server.url}/v1/text-to-speech/tone/multi-stream-input?output_format=pcm_16000"
        async with connect(base) as other:
            with anyio.fail_after(10):
                async with connect(base) as victim:
                    await victim.send(json.dumps({"text": " ", "context_id": "c"}))
                    await victim.send(json.dumps({"text": "x" * 400 + " ", "context_id": "c"}))
                    await victim.send(json.dumps({"context_id": "c", "flush": True}))
                    assert json.loads(await victim.recv()).get("audio")
                    victim.transport.abort()
                    dropped_at = time.monotonic()
                assert await eventually(lambda: server.stats.active_connections <= 1)
                freed_at = time.monotonic()
                await other.send(json.dumps({"text": " ", "context_id": "o"}))
                await other.send(json.dumps({"text": "Unaffected. ", "context_id": "o"}))
                await other.send(json.dumps({"context_id": "o", "flush": True}))
                frame: dict[str, Any] = json.loads(await other.recv())
                assert base64.b64decode(frame["audio"])
    assert freed_at - dropped_at < 2.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors and not tracebacks(caplog), [r.getMessage() for r in errors]
    recovery(
        "client vanishes mid-turn (our server)",
        "connection freed, no error logged, others unaffected",
        freed_at - dropped_at,
    )
