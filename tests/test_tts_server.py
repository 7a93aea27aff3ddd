"""The local ElevenLabs-compatible server over real loopback sockets, spoken to with raw frames."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from plugins.elevenlabs.messages import INACTIVITY_REASON, SETTINGS_CHANGED_REASON
from plugins.elevenlabs.server import LocalTTSServer
from plugins.elevenlabs.textbuffer import FIRST_CLAUSE_MAX_WORDS
from tests.fakes.engines import MS_PER_CHAR, TONE_HZ, FakeToneEngine, dominant_frequency

pytestmark = pytest.mark.anyio

VOICE = "JBFqnCBsd6RMkjVDRZzb"


@asynccontextmanager
async def serving(engine: Any, **kw: Any) -> AsyncIterator[LocalTTSServer]:
    async with LocalTTSServer(engine, **kw) as server:
        yield server


def ws_url(server: LocalTTSServer, *, multi: bool = False, **query: str) -> str:
    kind = "multi-stream-input" if multi else "stream-input"
    q = "&".join(f"{k}={v}" for k, v in {"output_format": "pcm_16000", **query}.items())
    return f"{server.url}/v1/text-to-speech/{VOICE}/{kind}?{q}"


async def recv_json(ws: ClientConnection, limit: float = 20) -> dict[str, Any]:
    import anyio

    with anyio.fail_after(limit):
        data = await ws.recv()
    assert isinstance(data, str)
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


async def read_until_final(
    ws: ClientConnection, context_id: str | None = None
) -> list[dict[str, Any]]:
    frames = []
    while True:
        obj = await recv_json(ws)
        frames.append(obj)
        if obj.get("isFinal") is True and (
            context_id is None or obj.get("contextId") == context_id
        ):
            return frames


def audio_of(frames: list[dict[str, Any]], context_id: str | None = None) -> bytes:
    out = b""
    for f in frames:
        if f.get("audio") and (context_id is None or f.get("contextId") == context_id):
            out += base64.b64decode(f["audio"])
    return out


async def test_single_context_speaks_and_closes_with_1000(piper_engine: Any) -> None:
    async with serving(piper_engine) as server, connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5}}))
        for word in "Hello there, this is a short test .".split():
            await ws.send(json.dumps({"text": word + " "}))
        await ws.send(json.dumps({"text": ""}))
        frames = await read_until_final(ws)
        pcm = audio_of(frames)
        seconds = len(pcm) / 2 / 16000
        assert 1.0 < seconds < 6.0, seconds
        last = frames[-1]
        assert last == {"isFinal": True}, last
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000


async def test_no_audio_before_first_threshold_then_flush_keeps_socket(piper_engine: Any) -> None:
    import anyio

    async with serving(piper_engine) as server, connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"text": " "}))
        # under 120 chars, and fewer words than the first clause's limit (no clause end either)
        few = " ".join(["word"] * (FIRST_CLAUSE_MAX_WORDS - 1)) + " "
        await ws.send(json.dumps({"text": few}))
        with anyio.move_on_after(1.5) as scope:
            await ws.recv()
        assert scope.cancel_called, "audio came before the first schedule threshold"
        await ws.send(json.dumps({"text": "and now a flush. ", "flush": True}))
        first = await recv_json(ws)
        assert first.get("audio"), first
        frames = [first]
        import anyio as _a

        with _a.move_on_after(3):
            while True:
                frames.append(await recv_json(ws))
        assert not any(f.get("isFinal") for f in frames), "a flush must not end the stream"
        # the socket is still open: more text still speaks
        await ws.send(json.dumps({"text": "Still here. ", "flush": True}))
        again = await recv_json(ws)
        assert again.get("audio")


async def test_schedule_threshold_triggers_generation(piper_engine: Any) -> None:
    async with serving(piper_engine) as server, connect(ws_url(server)) as ws:
        await ws.send(
            json.dumps({"text": " ", "generation_config": {"chunk_length_schedule": [50]}})
        )
        await ws.send(
            json.dumps({"text": "This sentence is long enough to pass fifty characters easily. "})
        )
        frame = await recv_json(ws, limit=20)
        assert frame.get("audio")


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 32000, 44100, 48000])
async def test_pcm_formats_have_exact_rate(rate: int) -> None:
    text = "One two three four five six seven eight nine ten."
    async with serving(FakeToneEngine()) as server:
        url = ws_url(server, output_format=f"pcm_{rate}").replace(VOICE, "tone")
        async with connect(url) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": text + " "}))
            await ws.send(json.dumps({"text": ""}))
            pcm = audio_of(await read_until_final(ws))
    expected = (len(text) + 1) * MS_PER_CHAR / 1000 * rate  # the text and its trailing space
    assert abs(len(pcm) / 2 - expected) <= 2, (len(pcm) / 2, expected)
    assert abs(dominant_frequency(pcm, rate) - TONE_HZ) < 3


async def test_alignment_joins_back_and_times_rise(piper_engine: Any) -> None:
    text = "The first sentence is here. Then a second one follows it. And a third ends the test."
    async with serving(piper_engine) as server, connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"text": " "}))
        await ws.send(json.dumps({"text": text + " ", "flush": True}))
        await ws.send(json.dumps({"text": ""}))
        frames = await read_until_final(ws)
        chars: list[str] = []
        starts: list[float] = []
        offset = 0.0
        for f in frames:
            al = f.get("alignment")
            if not al:
                continue
            assert al == f["normalizedAlignment"]
            assert len(al["chars"]) == len(al["charStartTimesMs"]) == len(al["charDurationsMs"])
            chars += al["chars"]
            starts += [offset + s for s in al["charStartTimesMs"]]
            offset += len(base64.b64decode(f["audio"])) / 2 / 16000 * 1000
        assert "".join(chars).strip() == text
        assert starts == sorted(starts)
        assert len([f for f in frames if f.get("alignment")]) >= 2


async def test_mp3_output_decodes_to_plausible_speech(piper_engine: Any) -> None:
    from plugins.elevenlabs.formats import Decoder, parse_output_format

    text = "Streaming speech should decode from mp3 into a plausible length of audio."
    async with (
        serving(piper_engine) as server,
        connect(ws_url(server, output_format="mp3_44100_128")) as ws,
    ):
        await ws.send(json.dumps({"text": " "}))
        await ws.send(json.dumps({"text": text + " "}))
        await ws.send(json.dumps({"text": ""}))
        mp3 = audio_of(await read_until_final(ws))
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    dec = Decoder(parse_output_format("mp3_44100_128"))
    pcm = dec.decode(mp3) + dec.finish()
    seconds = len(pcm) / 2 / 44100
    assert 0.04 * len(text) < seconds < 0.12 * len(text), seconds


async def test_inactivity_closes_with_documented_reason(piper_engine: Any) -> None:
    async with (
        serving(piper_engine) as server,
        connect(ws_url(server, inactivity_timeout="1")) as ws,
    ):
        await ws.send(json.dumps({"text": " "}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(ws, limit=10)
    rcvd = info.value.rcvd
    assert rcvd is not None and rcvd.code == 1008
    assert rcvd.reason.startswith(
        "Have not received a new text input within the timeout of 1 second"
    )
    assert INACTIVITY_REASON(1).startswith(rcvd.reason[:60])


async def test_settings_change_gets_1008(piper_engine: Any) -> None:
    async with serving(piper_engine) as server, connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"text": " ", "voice_settings": {"stability": 0.5}}))
        await ws.send(json.dumps({"text": "Hi ", "voice_settings": {"stability": 0.9}}))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await recv_json(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert info.value.rcvd.reason == SETTINGS_CHANGED_REASON[: len(info.value.rcvd.reason)]


async def test_sixth_context_gets_max_active_conversations(piper_engine: Any) -> None:
    async with serving(piper_engine) as server, connect(ws_url(server, multi=True)) as ws:
        for i in range(5):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{i}"}))
        await ws.send(json.dumps({"text": " ", "context_id": "c5"}))
        frames = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                frames.append(await recv_json(ws))
    assert any(f.get("error") == "max_active_conversations" for f in frames), frames
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_multi_context_flush_then_close_delivers_audio_then_final(piper_engine: Any) -> None:
    async with serving(piper_engine) as server, connect(ws_url(server, multi=True)) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "turn1"}))
        await ws.send(json.dumps({"text": "Hello", "context_id": "turn1"}))
        await ws.send(json.dumps({"text": " there!", "context_id": "turn1"}))
        await ws.send(json.dumps({"text": ""}))  # bare socket keep-alive closes nothing
        await ws.send(json.dumps({"context_id": "turn1", "flush": True}))
        await ws.send(json.dumps({"context_id": "turn1", "close_context": True}))
        frames = await read_until_final(ws, "turn1")
        assert audio_of(frames, "turn1")
        assert all(f.get("contextId") == "turn1" for f in frames)
        # the socket stays open for the next turn
        await ws.send(json.dumps({"text": "Next turn. ", "context_id": "turn2", "flush": True}))
        nxt = await recv_json(ws)
        assert nxt.get("contextId") == "turn2" and nxt.get("audio")
        await ws.send(json.dumps({"close_socket": True}))
        rest = await read_until_final(ws, "turn2")
        assert rest[-1]["isFinal"] is True
        with pytest.raises(ConnectionClosed) as info:
            await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000


@pytest.mark.parametrize(
    "bad",
    [
        "this is not json",
        json.dumps(["a", "list"]),
        json.dumps({"text": 42}),
        json.dumps({"text": "hi ", "flush": "yes"}),
        json.dumps({"text": " ", "generation_config": {"chunk_length_schedule": [10]}}),
        "x" * 300_000,
        b"\x00\x01binary",
    ],
    ids=["not-json", "list", "text-int", "flush-str", "schedule-range", "oversized", "binary"],
)
async def test_bad_input_gets_error_frame_and_server_keeps_serving(
    piper_engine: Any, bad: str | bytes
) -> None:
    async with serving(piper_engine) as server:
        async with connect(ws_url(server), max_size=None) as ws:
            if not (isinstance(bad, str) and "chunk_length_schedule" in bad):
                await ws.send(json.dumps({"text": " "}))
            await ws.send(bad)
            err = await recv_json(ws)
            assert err.get("error") and err.get("message"), err
            assert err.get("code") in (1003, 1007, 1008, 1009)
            # the same connection still serves
            await ws.send(json.dumps({"text": "Still serving. ", "flush": True}))
            ok = await recv_json(ws)
            assert ok.get("audio") or ok.get("error") is None
        # and so do other connections
        async with connect(ws_url(server)) as other:
            await other.send(json.dumps({"text": " "}))
            await other.send(json.dumps({"text": "Another client. ", "flush": True}))
            assert (await recv_json(other)).get("audio")


async def test_unsupported_format_lists_supported(piper_engine: Any) -> None:
    async with (
        serving(piper_engine) as server,
        connect(ws_url(server, output_format="wav_96000")) as ws,
    ):
        err = await recv_json(ws)
        assert err["error"] == "invalid_output_format"
        assert "pcm_16000" in err["message"] and "mp3_44100_128" in err["message"]


async def test_unknown_voice_speaks_default_with_warning(
    piper_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="voxloop.tts_server")
    async with serving(piper_engine) as server:
        url = ws_url(server).replace(VOICE, "no-such-voice")
        async with connect(url) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": "Default voice. ", "flush": True}))
            assert (await recv_json(ws)).get("audio")
    assert any("no-such-voice" in r.getMessage() for r in caplog.records)


async def test_strict_voices_refuses_unknown_voice(piper_engine: Any) -> None:
    async with serving(piper_engine, strict_voices=True) as server:
        url = ws_url(server).replace(VOICE, "no-such-voice")
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 404
        assert b"no-such-voice" in info.value.response.body


async def test_voice_speed_changes_duration(piper_engine: Any) -> None:
    text = "Speed changes how long this sentence takes to say out loud."
    durations = {}
    async with serving(piper_engine) as server:
        for speed in (0.8, 1.2):
            async with connect(ws_url(server)) as ws:
                await ws.send(json.dumps({"text": " ", "voice_settings": {"speed": speed}}))
                await ws.send(json.dumps({"text": text + " "}))
                await ws.send(json.dumps({"text": ""}))
                durations[speed] = len(audio_of(await read_until_final(ws))) / 2 / 16000
    assert durations[1.2] < durations[0.8] * 0.85, durations


async def test_alignment_offsets_match_audio_across_split_frames() -> None:
    """Long chunks are cut into frames; a client's running offset must track the audio."""
    from plugins.elevenlabs.alignment import AlignmentTracker
    from plugins.elevenlabs.messages import Alignment

    text = "x" * 150  # 3 s of tone: cut into a 0.2 s first frame, then 1 s frames
    async with serving(FakeToneEngine()) as server:
        url = ws_url(server).replace(VOICE, "tone")
        async with connect(url) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": text + " ", "flush": True}))
            await ws.send(json.dumps({"text": ""}))
            frames = [f for f in await read_until_final(ws) if f.get("audio")]
    assert len(frames) >= 4
    tracker = AlignmentTracker()
    starts: list[float] = []
    audio = 0.0
    for f in frames:
        seconds = len(base64.b64decode(f["audio"])) / 2 / 16000
        audio += seconds
        al = f.get("alignment")
        parsed = None
        if al:
            parsed = Alignment(
                tuple(al["chars"]), tuple(al["charStartTimesMs"]), tuple(al["charDurationsMs"])
            )
        starts += [s for _, s, _ in tracker.feed(parsed, seconds)]
    assert starts == sorted(starts) and len(starts) == len(text) + 1
    # the last character starts where the tone says it does, and the offset tracks the audio
    assert abs(starts[-1] - len(text) * MS_PER_CHAR / 1000) < 0.005
    assert abs(tracker.offset - audio) < 0.05


async def test_close_context_abandons_unflushed_text_but_a_flush_still_plays(
    piper_engine: Any,
) -> None:
    """Barge-in: text released by the schedule but not flushed is dropped once the context is
    closed (the final comes at once); text covered by a flush is still spoken in full."""
    long_text = "This sentence is long enough to pass the first schedule threshold easily. " * 12
    async with serving(piper_engine) as server, connect(ws_url(server, multi=True)) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "a"}))
        await ws.send(json.dumps({"text": long_text, "context_id": "a"}))
        await ws.send(json.dumps({"context_id": "a", "close_context": True}))
        started = time.monotonic()
        abandoned = await read_until_final(ws, "a")
        assert time.monotonic() - started < 3.0
        assert server.stats.abandoned_items >= 1
        spoken = len(audio_of(abandoned, "a")) / 2 / 16000
        await ws.send(json.dumps({"text": " ", "context_id": "b"}))
        await ws.send(json.dumps({"text": long_text, "context_id": "b", "flush": True}))
        await ws.send(json.dumps({"context_id": "b", "close_context": True}))
        full = len(audio_of(await read_until_final(ws, "b"), "b")) / 2 / 16000
    assert full > 20 and spoken < full / 2, (spoken, full)
