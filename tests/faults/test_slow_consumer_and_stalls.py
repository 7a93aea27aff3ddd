"""Fault 5 (slow consumer), a server that goes silent, and rapid barge-ins against the 5-context
limit. Real local TTS server and real client over loopback; the tone fake engine makes the
audio exactly countable."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest

from agent.audio import PlayoutBuffer
from agent.conversation import TurnRecord
from agent.session import Session
from plugins.elevenlabs.client import CHUNK_QUEUE, ElevenLabsTTS, TTSConfig, TTSTimeoutError
from plugins.elevenlabs.messages import MAX_CONTEXTS
from plugins.elevenlabs.server import LocalTTSServer
from plugins.openai.llm import OpenAILLM
from tests.fakes.engines import MS_PER_CHAR, FakeToneEngine
from tests.fakes.faulty_tts import Expect, Pause, Script, ScriptedTTSServer, SendAudio, tone_pcm
from tests.fakes.scripted_llm import ScriptedChatServer, tokens

pytestmark = pytest.mark.anyio


async def test_slow_consumer_gets_backpressure_not_dropped_audio() -> None:
    """Fault 5: the server makes audio far faster than real time while the consumer reads
    slowly. Pass: the client's queue never exceeds its bound, the server is held back (TCP
    backpressure), and every sample the server made reaches the consumer (nothing dropped)."""
    text = "x" * 1200  # 24 s of tone, made at once by the fake engine
    async with LocalTTSServer(FakeToneEngine()) as server:
        config = TTSConfig(voice_id="tone", output_format="pcm_16000")
        async with ElevenLabsTTS(config, base_url=server.url) as tts:
            ctx = await tts.open_context()
            await ctx.send(text + " ")
            await ctx.flush()
            await ctx.close()
            got = 0
            max_queued = 0
            with anyio.fail_after(60):
                async for chunk in ctx.chunks():
                    got += len(chunk.pcm) // 2
                    max_queued = max(max_queued, ctx._receive.statistics().current_buffer_used)
                    await anyio.sleep(0.02)  # a consumer much slower than the socket
    expected = (len(text) + 1) * MS_PER_CHAR / 1000 * 16000
    assert abs(got - expected) <= 2, (got, expected)
    assert max_queued <= CHUNK_QUEUE


async def test_server_that_goes_silent_after_the_flush_times_out() -> None:
    """The server stays connected but stops sending mid-answer. Pass: TTSTimeoutError after
    audio_timeout (+1 s), not a hang."""
    plan = Script((Expect("flush"), SendAudio(tone_pcm(10, 16000), chars="x" * 10), Pause(60)))
    async with ScriptedTTSServer([plan]) as fake:
        config = TTSConfig(output_format="pcm_16000", audio_timeout=1.0)
        async with ElevenLabsTTS(config, base_url=fake.url) as tts:
            ctx = await tts.open_context()
            await ctx.send("Hello there ")
            await ctx.flush()
            started = time.monotonic()
            chunks = 0
            with anyio.fail_after(10), pytest.raises(TTSTimeoutError):
                async for _ in ctx.chunks():
                    chunks += 1
            assert chunks == 1
            assert time.monotonic() - started < 2.5


async def test_ten_barge_ins_in_one_second_stay_within_the_context_limit(piper_engine: Any) -> None:
    """Issue: 10 barge-ins in one second leave no task behind and never exceed the 5-context
    limit (closed contexts count until their final). Pass: every turn ends interrupted (none
    fails), the server never sees more than 5 counted contexts, no task is left over."""
    answer = tokens(*[f"word{i} " for i in range(400)], delay=0.0002)
    peak = 0
    # the real voice: its synthesis keeps closed contexts counted for a while (as the live
    # service does), so ten turns in a second run into the limit
    async with ScriptedChatServer([answer]) as fake, LocalTTSServer(piper_engine) as server:
        llm = OpenAILLM("scripted", base_url=fake.base_url)
        config = TTSConfig(output_format="pcm_16000")
        async with llm, ElevenLabsTTS(config, base_url=server.url) as tts:
            output = PlayoutBuffer(16000, max_seconds=1.0)
            session = Session(llm, tts, output)
            before = len(asyncio.all_tasks())
            results: list[TurnRecord] = []
            started = time.monotonic()
            for i in range(10):
                record = TurnRecord(i + 1)
                results.append(record)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(session.respond, "talk", record)
                    await anyio.sleep(0.1)
                    tg.cancel_scope.cancel()  # barge-in
                sock = tts._socket
                assert sock is not None
                peak = max(peak, sock.protocol.counted_contexts)
            elapsed = time.monotonic() - started
            with anyio.fail_after(10):
                while tts._socket is not None and tts._socket.protocol.counted_contexts:
                    await tts._socket.slot_freed.wait()
            after = len(asyncio.all_tasks())
    assert elapsed < 3.0  # ten barge-ins in about a second (plus cleanup)
    assert len(results) == 10
    assert all(r.interrupted and r.error is None for r in results), [r.error for r in results]
    assert peak <= MAX_CONTEXTS
    assert after <= before
