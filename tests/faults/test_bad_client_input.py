"""Fault 7: bad client input to our LocalTTSServer (real server, real sockets).

Already covered in tests/test_tts_server.py and not repeated here: invalid JSON, a non-object,
text of the wrong type, a non-boolean flush, a schedule value below 50, an oversized frame, a
binary frame (`test_bad_input_gets_error_frame_and_server_keeps_serving`), an unsupported
output_format after the handshake (`test_unsupported_format_lists_supported`), an unknown voice
spoken with the default voice plus a warning (`test_unknown_voice_speaks_default_with_warning`)
and refused under strict_voices (`test_strict_voices_refuses_unknown_voice`).

The engine is FakeToneEngine (deterministic: 20 ms of tone per character), so the flood test can
check the exact amount of audio; the server under test is the real one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig, TTSError
from plugins.elevenlabs.server import LocalTTSServer
from tests.fakes.engines import MS_PER_CHAR, FakeToneEngine

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]


def ws_url(server: LocalTTSServer, query: dict[str, str] | None = None) -> str:
    """The multi-context URL of the tone voice, pcm_16000 unless `query` says otherwise."""
    params = "&".join(
        f"{k}={v}" for k, v in {"output_format": "pcm_16000", **(query or {})}.items()
    )
    return f"{server.url}/v1/text-to-speech/tone/multi-stream-input?{params}"


async def next_json(ws: ClientConnection, limit: float = 10.0) -> dict[str, Any]:
    with anyio.fail_after(limit):
        data = await ws.recv()
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


async def speaks(ws: ClientConnection, context: str, text: str = "Still serving.") -> bool:
    """The connection speaks `text` in `context` (its first frame back is audio)."""
    await ws.send(json.dumps({"text": " ", "context_id": context}))
    await ws.send(json.dumps({"text": text + " ", "context_id": context, "flush": True}))
    return bool((await next_json(ws)).get("audio"))


async def test_strict_server_refuses_unknown_voice_and_our_client_says_which_exist(
    caplog: pytest.LogCaptureFixture, recovery: Recorder
) -> None:
    """Fault: our client asks a strict server for a voice it does not have.

    Pass: the client fails fast (under 2 s) with a TTSError that quotes the server's list of
    voices; exactly one handshake was refused (a 404 is not retried).
    """
    caplog.set_level(logging.WARNING, logger="voxloop.tts_server")
    async with LocalTTSServer(FakeToneEngine(), strict_voices=True) as server:
        started = time.monotonic()
        with pytest.raises(TTSError, match="HTTP 404") as info:
            async with ElevenLabsTTS(TTSConfig(voice_id="no-such-voice"), base_url=server.url):
                pass
        failed = time.monotonic() - started
    assert failed < 2.0
    assert "no-such-voice" in str(info.value) and "This server has: tone" in str(info.value)
    refusals = [r for r in caplog.records if "refused 404" in r.getMessage()]
    assert len(refusals) == 1
    recovery(
        "unknown voice, strict server", "HTTP 404 listing voices -> TTSError, no retry", failed
    )


async def test_unknown_model_is_accepted_and_noted_once_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: clients ask for model_ids the local server does not have (it has one engine).

    Decision (documented in plugins/elevenlabs/server.py): any model_id is accepted and spoken
    with the one engine; the first one requested is noted in one DEBUG line per server.
    Pass: both connections speak; exactly one DEBUG line names a model_id; no WARNING.
    """
    caplog.set_level(logging.DEBUG, logger="voxloop.tts_server")
    async with LocalTTSServer(FakeToneEngine()) as server:
        for model in ("eleven_imaginary_v9", "another_model"):
            async with connect(ws_url(server, {"model_id": model})) as ws:
                assert await speaks(ws, "c")
    server_lines = [r for r in caplog.records if r.name == "voxloop.tts_server"]
    notes = [r for r in server_lines if "model_id" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG
    assert "eleven_imaginary_v9" in notes[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_our_client_rejects_an_unsupported_format_before_connecting() -> None:
    """Fault: our client is configured with an output_format nobody supports.

    Pass: a TTSError at construction lists the supported formats; no connection is attempted.
    """
    async with LocalTTSServer(FakeToneEngine()) as server:
        with pytest.raises(TTSError, match="pcm_16000") as info:
            ElevenLabsTTS(TTSConfig(output_format="wav_96000"), base_url=server.url)
        assert "wav_96000" in str(info.value)
        assert server.stats.connections == 0


BAD_QUERIES = {
    "inactivity-zero": ({"inactivity_timeout": "0"}, "inactivity_timeout"),
    "inactivity-too-long": ({"inactivity_timeout": "500"}, "inactivity_timeout"),
    "inactivity-not-a-number": ({"inactivity_timeout": "soon"}, "inactivity_timeout"),
    "seed-negative": ({"seed": "-1"}, "seed"),
    "seed-too-big": ({"seed": "4294967296"}, "seed"),
    "flag-not-boolean": ({"sync_alignment": "maybe"}, "sync_alignment"),
    "normalization-unknown": ({"apply_text_normalization": "always"}, "apply_text_normalization"),
}


@pytest.mark.parametrize("case", list(BAD_QUERIES))
async def test_bad_query_is_refused_at_the_handshake_naming_the_parameter(
    case: str, recovery: Recorder
) -> None:
    """Fault: a connection URL with an out-of-range or malformed query parameter.

    Pass: HTTP 400 whose body names the parameter and its valid range; a connection opened
    before it keeps speaking.
    """
    query, name = BAD_QUERIES[case]
    async with LocalTTSServer(FakeToneEngine()) as server, connect(ws_url(server)) as other:
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server, query)):
                pass
        refused = time.monotonic() - started
        assert info.value.response.status_code == 400
        assert name in info.value.response.body.decode()
        assert await speaks(other, "o")
    recovery(f"bad query ({case})", "HTTP 400 naming the parameter; others unaffected", refused)


BAD_MESSAGES: dict[str, tuple[dict[str, Any], str]] = {
    "schedule-above-500": ({"generation_config": {"chunk_length_schedule": [600]}}, "500"),
    "schedule-empty": ({"generation_config": {"chunk_length_schedule": []}}, "non-empty"),
    "schedule-not-ints": ({"generation_config": {"chunk_length_schedule": ["a"]}}, "integers"),
    "schedule-booleans": ({"generation_config": {"chunk_length_schedule": [True]}}, "integers"),
    "schedule-not-a-list": ({"generation_config": {"chunk_length_schedule": 120}}, "list"),
    "generation-config-not-object": ({"generation_config": "fast"}, "generation_config"),
    "speed-out-of-range": ({"voice_settings": {"speed": 2.0}}, "voice_settings.speed"),
    "stability-out-of-range": ({"voice_settings": {"stability": 1.5}}, "voice_settings.stability"),
    "similarity-not-number": (
        {"voice_settings": {"similarity_boost": "high"}},
        "voice_settings.similarity_boost",
    ),
    "speaker-boost-not-bool": (
        {"voice_settings": {"use_speaker_boost": "yes"}},
        "voice_settings.use_speaker_boost",
    ),
    "speed-not-finite": ({"voice_settings": {"speed": 1e999}}, "voice_settings.speed"),
    "locators-not-list": ({"pronunciation_dictionary_locators": "x"}, "locators"),
    "context-id-not-string": ({"context_id": 7}, "context_id"),
    "api-key-not-string": ({"xi_api_key": 12345}, "xi_api_key"),
}


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
async def test_out_of_range_message_gets_an_error_frame_naming_the_problem(
    case: str, recovery: Recorder
) -> None:
    """Fault: a message on a live context carries an out-of-range or mistyped value.

    Pass: an error frame (code 1007/1008) whose message names the field; the message is ignored
    and the same connection keeps speaking; another connection is unaffected.
    """
    fields, expected = BAD_MESSAGES[case]
    async with (
        LocalTTSServer(FakeToneEngine()) as server,
        connect(ws_url(server)) as ws,
        connect(ws_url(server)) as other,
    ):
        await ws.send(json.dumps({"text": " ", "context_id": "c"}))
        sent_at = time.monotonic()
        await ws.send(json.dumps({"text": "Hello ", "context_id": "c", **fields}))
        err = await next_json(ws)
        answered = time.monotonic() - sent_at
        assert err.get("error") and err.get("code") in (1007, 1008), err
        assert expected in err["message"], err
        await ws.send(json.dumps({"text": "again. ", "context_id": "c", "flush": True}))
        assert (await next_json(ws)).get("audio")
        assert await speaks(other, "o")
        assert server.stats.errors_sent == 1
    recovery(
        f"bad message ({case})", "error frame naming the field; connection serves on", answered
    )


async def test_flood_of_tiny_messages_is_served_without_starving_others(
    recovery: Recorder,
) -> None:
    """Fault: one client sends 5,000 one-character text frames into a context.

    Pass: the server answers it with exactly the audio of the text (20 ms a character); the
    process's resident memory (client and server together) grows by less than 64 MB throughout;
    meanwhile a second connection keeps getting its first audio in under 2 s (checked
    repeatedly for as long as the flood lasts).
    """
    text = ("hello world " * 500)[:5000]
    async with LocalTTSServer(FakeToneEngine()) as server:
        probe_ttfb: list[float] = []
        flood_done = anyio.Event()
        received = 0

        async def flood() -> None:
            nonlocal received
            async with connect(ws_url(server)) as ws:

                async def read() -> None:
                    nonlocal received
                    while True:
                        frame = await next_json(ws, 30)
                        if frame.get("audio"):
                            received += len(frame["audio"]) * 3 // 4 - frame["audio"].count("=")
                        if frame.get("isFinal"):
                            return

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read)
                    await ws.send(json.dumps({"text": " ", "context_id": "flood"}))
                    for i, char in enumerate(text):
                        await ws.send(json.dumps({"text": char, "context_id": "flood"}))
                        if i % 50 == 0:
                            await (
                                anyio.lowlevel.checkpoint()
                            )  # the flooder is another process in real life
                    await ws.send(json.dumps({"context_id": "flood", "flush": True}))
                    await ws.send(json.dumps({"context_id": "flood", "close_context": True}))
            flood_done.set()

        async def probe() -> None:
            config = TTSConfig(voice_id="tone", output_format="pcm_16000")
            async with ElevenLabsTTS(config, base_url=server.url) as tts:
                while not flood_done.is_set() or len(probe_ttfb) < 3:
                    ctx = await tts.open_context()
                    await ctx.send("Quick check. ")
                    await ctx.flush()
                    await ctx.close()
                    async for _ in ctx.chunks():
                        pass
                    assert ctx.ttfb is not None
                    probe_ttfb.append(ctx.ttfb)

        baseline = resident_bytes()
        peak = baseline

        async def watch_memory() -> None:
            nonlocal peak
            while not flood_done.is_set():
                peak = max(peak, resident_bytes())
                await anyio.sleep(0.02)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_memory)
                tg.start_soon(flood)
                tg.start_soon(probe)
        growth = peak - baseline

    expected = round(len(text) * MS_PER_CHAR / 1000 * 16000) * 2
    assert abs(received - expected) <= 400, (received, expected)  # per-chunk resampling rounding
    assert growth < 64 * 1024 * 1024, growth
    assert len(probe_ttfb) >= 3 and max(probe_ttfb) < 2.0, probe_ttfb
    recovery(
        "5,000 one-character frames on one connection",
        f"all answered; resident memory grew {growth / 2**20:.0f} MB; other connection's "
        f"worst TTFB over {len(probe_ttfb)} checks",
        max(probe_ttfb),
    )


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; the test process holds both ends)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
