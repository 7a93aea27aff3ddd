"""Our ElevenLabs client against our local server, over real loopback sockets."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from plugins.elevenlabs.client import (
    AuthenticationError,
    ConnectionLostError,
    ElevenLabsTTS,
    TTSConfig,
)
from plugins.elevenlabs.messages import TooManyContextsError
from plugins.elevenlabs.server import LocalTTSServer

pytestmark = pytest.mark.anyio

SECRET = "sk-test-0123456789abcdef-SECRET"


async def speak(tts: ElevenLabsTTS, text: str) -> tuple[bytes, Any]:
    ctx = await tts.open_context()
    for word in text.split():
        await ctx.send(word + " ")
    await ctx.flush()
    await ctx.close()
    pcm = b""
    async for chunk in ctx.chunks():
        assert chunk.sample_rate == 16000
        pcm += chunk.pcm
    return pcm, ctx


async def test_multi_context_turns_on_one_warm_socket(piper_engine: Any) -> None:
    frames: list[tuple[str, float, str]] = []
    async with LocalTTSServer(piper_engine) as server:
        config = TTSConfig(output_format="pcm_16000")
        async with ElevenLabsTTS(
            config, base_url=server.url, frame_listener=lambda d, t, f: frames.append((d, t, f))
        ) as tts:
            for text in ("Hello there, first turn.", "And here is the second turn."):
                pcm, ctx = await speak(tts, text)
                assert 0.8 < len(pcm) / 2 / 16000 < 5.0
                assert ctx.ttfb is not None and 0 < ctx.ttfb < 10
                words = [w.word for w in ctx.words()]
                assert " ".join(words) == text
                starts = [w.start for w in ctx.words()]
                assert starts == sorted(starts)
                assert ctx.heard_text(0.0) == ""
                assert ctx.heard_text(60.0) == text
        assert server.stats.connections == 1
    out = [f for d, _, f in frames if d == "out"]
    assert out[-1] == '{"close_socket":true}' or '"close_socket"' in out[-1]
    assert sum('"flush":true' in f.replace(" ", "") for f in out) == 2


async def test_single_context_mode_uses_a_socket_per_context(piper_engine: Any) -> None:
    async with LocalTTSServer(piper_engine) as server:
        config = TTSConfig(output_format="pcm_16000", multi=False)
        async with ElevenLabsTTS(config, base_url=server.url) as tts:
            for text in ("One socket.", "Another socket."):
                pcm, _ = await speak(tts, text)
                assert pcm
        assert server.stats.connections == 2


async def test_local_context_limit_is_enforced_before_the_wire(piper_engine: Any) -> None:
    async with LocalTTSServer(piper_engine) as server:
        async with ElevenLabsTTS(TTSConfig(), base_url=server.url) as tts:
            for _ in range(5):
                await tts.open_context()
            with pytest.raises(TooManyContextsError):
                await tts.open_context()


async def test_keepalive_prevents_inactivity_close(piper_engine: Any) -> None:
    async with LocalTTSServer(piper_engine) as server:
        config = TTSConfig(inactivity_timeout=2, keepalive_interval=0.5)
        async with ElevenLabsTTS(config, base_url=server.url) as tts:
            await anyio.sleep(3.5)  # longer than the server's inactivity timeout
            pcm, _ = await speak(tts, "Still awake.")
            assert pcm
            assert tts.reconnects == 0


async def test_bad_key_fails_fast_without_retry_and_never_leaks(
    piper_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with LocalTTSServer(piper_engine, api_key="the-right-key") as server:
        tts = ElevenLabsTTS(TTSConfig(), base_url=server.url, api_key=SECRET)
        assert SECRET not in repr(tts)
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as info:
            async with tts:
                pass
        assert time.monotonic() - started < 2.0
        assert server.stats.connections == 0
        assert "ELEVENLABS_API_KEY" in str(info.value)
    texts = [r.getMessage() for r in caplog.records] + [str(info.value), repr(info.value)]
    for record in caplog.records:
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(repr(record.exc_info[1]))
    assert not any(SECRET in t for t in texts)
    assert not any(SECRET in t for t in (tts.url(), repr(tts)))


async def test_good_key_in_header_only(piper_engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    frames: list[str] = []
    async with LocalTTSServer(piper_engine, api_key=SECRET) as server:
        async with ElevenLabsTTS(
            TTSConfig(),
            base_url=server.url,
            api_key=SECRET,
            frame_listener=lambda d, t, f: frames.append(f),
        ) as tts:
            assert SECRET not in tts.url()
            pcm, _ = await speak(tts, "Authorised.")
            assert pcm
    assert not any(SECRET in f for f in frames)
    assert not any(SECRET in r.getMessage() for r in caplog.records)


async def test_unreachable_server_gives_clear_error_after_bounded_retries() -> None:
    with anyio.fail_after(20):
        config = TTSConfig(max_reconnects=2, backoff_initial=0.05)
        with pytest.raises(ConnectionLostError) as info:
            async with ElevenLabsTTS(config, base_url="ws://127.0.0.1:9"):
                pass
    assert "voxloop tts-server" in str(info.value)
