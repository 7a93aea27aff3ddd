"""Fault 6: a TTS server sends malformed frames to our client.

The server is `ScriptedTTSServer` (a fake, so named) writing the bad frames between good ones; the
client is our real ElevenLabsTTS over a real socket. What the context yields is compared byte for
byte with the good frames' audio.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import pytest

from agent.session import Session
from plugins.elevenlabs.client import (
    ConnectionLostError,
    ContextError,
    ElevenLabsTTS,
    TTSConfig,
    TTSContext,
)
from plugins.elevenlabs.formats import Encoder, parse_output_format
from plugins.openai.llm import OpenAILLM
from tests.fakes.faulty_tts import (
    Expect,
    Pause,
    Respond,
    Script,
    ScriptedTTSServer,
    SendAudio,
    SendFinal,
    SendRaw,
    tone_pcm,
)
from tests.fakes.scripted_llm import ScriptedChatServer, tokens
from tests.faults.support import MemoryOutput, loud_records, tracebacks

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
CTX = "ctx-1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def raw_audio(pcm: bytes, **extra: Any) -> SendRaw:
    return SendRaw(json.dumps({"audio": b64(pcm), "isFinal": None, "contextId": CTX, **extra}))


async def speak_and_collect(tts: ElevenLabsTTS, text: str) -> tuple[bytes, TTSContext]:
    ctx = await tts.open_context()
    await ctx.send(text)
    await ctx.flush()
    await ctx.close()
    pcm = b""
    async for chunk in ctx.chunks():
        assert len(chunk.pcm) % 2 == 0, "a chunk must hold whole samples"
        pcm += chunk.pcm
    return pcm, ctx


async def test_malformed_frames_are_dropped_and_never_garble_the_audio(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: between good audio frames the server sends non-JSON text, a binary frame, bad
    base64, PCM with an odd byte count (twice), isFinal of the wrong type, alignment arrays of
    unequal length, unknown keys, an unknown frame type, a contextId that is not a string, audio
    for a context that does not exist, a 300 kB frame without audio, and a 1.2 MB audio frame
    (legal: the live service sends frames over 1 MiB).

    Pass: the session's turn plays exactly the good frames' audio, in order (an odd byte count
    never shifts later samples; a frame whose alignment is malformed keeps its audio and loses
    only the alignment) and ends without error; each malformed frame gives exactly one WARNING
    (8 in all), unknown or stale frames are ignored quietly; no traceback; the next turn runs on
    the same socket.
    """
    caplog.set_level(logging.DEBUG)
    good = [tone_pcm(10, 16000, seed=i) for i in range(5)]
    big = tone_pcm(3750, 16000, seed=9)  # 37.5 s of 16 kHz audio: 1.2 MB raw, 1.6 MB as base64
    unequal = {"chars": ["a", "b"], "charStartTimesMs": [0], "charDurationsMs": [5, 5]}
    script = Script(
        (
            Expect("flush"),
            SendAudio(good[0], "good"),
            SendRaw("this is not json {"),
            SendRaw(b"\x00\x01 a binary frame"),
            SendRaw(json.dumps({"audio": "@@ not base64 @@", "contextId": CTX})),
            raw_audio(b"\x01\x02\x03"),  # half a sample too many
            SendAudio(good[1]),
            SendRaw(json.dumps({"isFinal": "yes", "contextId": CTX})),
            raw_audio(good[2], alignment=unequal),  # audio fine, alignment broken
            raw_audio(good[3], type="audio_chunk", surprise={"nested": [1, 2]}),
            SendRaw(json.dumps({"type": "flush_done", "context_id": CTX})),
            SendRaw(json.dumps({"audio": b64(b"\x00\x00"), "contextId": 5})),
            SendRaw(json.dumps({"audio": b64(b"\x00\x00"), "contextId": "ctx-99"})),
            SendRaw(json.dumps({"message": "x" * 300_000})),
            SendAudio(big),
            raw_audio(b"\x01\x02\x03\x04\x05"),
            SendAudio(good[4]),
            Expect("close_context"),
            SendFinal(),
            Respond(),
        )
    )
    async with (
        ScriptedTTSServer([script]) as fake,
        ScriptedChatServer([tokens("Hello ", "there."), tokens("Again.")]) as fake_llm,
    ):
        llm = OpenAILLM("scripted", base_url=fake_llm.base_url)
        output = MemoryOutput()
        with anyio.fail_after(20):
            async with llm, ElevenLabsTTS(TTSConfig(), base_url=fake.url) as tts:
                session = Session(llm, tts, output)
                first = await session.respond("one")
                pcm = bytes(output.pcm)
                second = await session.respond("two")
                again = bytes(output.pcm)

    expected = good[0] + good[1] + good[2] + good[3] + big + good[4]
    assert first.error is None and first.heard_text == "Hello there."
    assert len(pcm) == len(expected) and pcm == expected, "only the good frames' audio, aligned"
    assert second.error is None and again == tone_pcm(len("Again."), 16000)
    assert tts.reconnects == 0 and len(fake.connections) == 1, "the same socket, still serving"
    loud = [r.getMessage() for r in loud_records(caplog)]
    assert len(loud) == 8, loud
    assert sum("bad frame" in m for m in loud) == 6, loud
    assert sum("not whole samples" in m for m in loud) == 2, loud
    assert not tracebacks(caplog)
    started, first_audio = second.at("llm_request"), second.at("first_audio_byte")
    assert started is not None and first_audio is not None
    recovery(
        "malformed server frames (13 kinds) mid-turn",
        "each dropped or ignored (8 warnings), good audio intact, turn completes; next turn on "
        "the same socket: first audio after turn start",
        first_audio - started,
    )


def mp3_bytes(seconds: float, rate: int = 44100) -> bytes:
    """A complete MP3 stream of a tone (our real encoder)."""
    n = int(seconds * rate)
    pcm = (np.sin(2 * np.pi * 440 * np.arange(n) / rate) * 8000).astype("<i2").tobytes()
    encoder = Encoder(parse_output_format("mp3_44100_128"), rate)
    return encoder.encode(pcm) + encoder.finish()


async def test_undecodable_mp3_is_dropped_without_killing_the_socket(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: on an mp3 stream the server sends valid base64 of bytes that are not MP3.

    Pass: that frame is dropped with one WARNING (the codec error does not escape the socket's
    reader, which would take the whole TTS client down); the audio before and after it decodes
    (about 0.6 s in all); no traceback; the next context on the same socket works.
    """
    caplog.set_level(logging.DEBUG)
    script = Script(
        (
            Expect("flush"),
            SendAudio(mp3_bytes(0.3)),
            SendAudio(b"\xff\xfb\x90\x00" * 300),  # MP3 sync words, garbage headers
            SendAudio(mp3_bytes(0.3)),
            Expect("close_context"),
            SendFinal(),
            Respond(),
        )
    )
    async with ScriptedTTSServer([script]) as fake:
        with anyio.fail_after(20):
            config = TTSConfig(output_format="mp3_44100_128")
            async with ElevenLabsTTS(config, base_url=fake.url) as tts:
                pcm, _ = await speak_and_collect(tts, "Hello there. ")
                started = time.monotonic()  # (the fake's later audio is PCM: send no text)
                ctx2 = await tts.open_context()
                await ctx2.close()
                async for _ in ctx2.chunks():
                    pass
                next_final = time.monotonic() - started
    assert 0.5 < len(pcm) / 2 / 44100 < 0.8, len(pcm) / 2 / 44100
    loud = [r.getMessage() for r in loud_records(caplog)]
    assert len(loud) == 1 and "does not decode" in loud[0], loud
    assert not tracebacks(caplog)
    assert ctx2.final_at is not None and tts.reconnects == 0
    recovery(
        "undecodable MP3 frame",
        "frame dropped (1 warning), decoder reset, audio around it kept; next context final",
        next_final,
    )


async def test_frame_over_the_socket_limit_is_a_typed_error_and_the_next_context_reconnects(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: the server sends a 17 MiB frame (over the client's 16 MiB socket limit, the size the
    live service itself uses).

    Pass: the context raises a typed ConnectionLostError naming the limit within 2 s of the frame
    (the audio before it was delivered); no traceback; the next context opens a fresh socket and
    speaks.
    """
    caplog.set_level(logging.DEBUG)
    before = tone_pcm(10, 16000)
    huge = json.dumps({"audio": "A" * (17 * 1024 * 1024), "contextId": CTX})
    script = Script((Expect("flush"), SendAudio(before), SendRaw(huge), Pause(30)))
    async with ScriptedTTSServer([script]) as fake:
        with anyio.fail_after(20):
            async with ElevenLabsTTS(TTSConfig(), base_url=fake.url) as tts:
                ctx = await tts.open_context()
                await ctx.send("Hello. ")
                await ctx.flush()
                got = b""
                with pytest.raises(ConnectionLostError, match="MiB") as info:
                    async for chunk in ctx.chunks():
                        got += chunk.pcm
                        sent_at = time.monotonic()
                failed_at = time.monotonic()
                again, _ = await speak_and_collect(tts, "Again. ")
                recovered_at = time.monotonic()
    assert got == before
    assert failed_at - sent_at < 2.0
    assert "1009" in str(info.value)
    assert again == tone_pcm(len("Again."), 16000) and tts.reconnects == 1
    assert not tracebacks(caplog)
    recovery(
        "server frame over the 16 MiB socket limit",
        "typed ConnectionLostError (1009), next context on a fresh socket",
        recovered_at - sent_at,
    )


async def test_error_frame_naming_one_context_fails_only_that_context(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: with two contexts live (a barge-in leaves the old one draining), the server sends an
    error frame naming the old context.

    Pass: the old context raises a typed ContextError; the new one is untouched and yields its
    audio exactly; one WARNING.
    """
    caplog.set_level(logging.DEBUG)
    good = tone_pcm(12, 16000, seed=4)
    error = {"error": "generation_failed", "message": "scripted", "code": 1011, "contextId": CTX}
    script = Script(
        (
            Expect("flush"),
            SendRaw(json.dumps(error)),
            SendAudio(good, context="ctx-2"),
            SendFinal(context="ctx-2"),
            Respond(),
        )
    )
    async with ScriptedTTSServer([script]) as fake:
        with anyio.fail_after(20):
            async with ElevenLabsTTS(TTSConfig(), base_url=fake.url) as tts:
                old = await tts.open_context()
                await old.send("Old turn. ")
                new = await tts.open_context()
                await new.send("New turn. ")
                await new.flush()
                started = time.monotonic()
                with pytest.raises(ContextError, match="generation_failed"):
                    async for _ in old.chunks():
                        pass
                failed = time.monotonic() - started
                pcm = b"".join([chunk.pcm async for chunk in new.chunks()])
    assert pcm == good
    assert len(loud_records(caplog)) == 1
    recovery(
        "error frame naming an old context",
        "typed ContextError for that context only; the live one plays on",
        failed,
    )
