"""The local TTS server under abuse (issue 14): clients that hang up mid-flood, one huge
sentence, hostile strings, keys sent every way at DEBUG, too many sockets, a missing key,
a client that floods past a fatal close. Real loopback sockets against the real server; the
engines are fakes (named so) that burn CPU or make audio fast, so each test takes seconds.
Every load loop is bounded in count and in time. A well-behaved client on another connection
measures its time to first audio before and during each abuse.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from plugins.elevenlabs.redaction import secret_safe_logger
from plugins.elevenlabs.server import LocalTTSServer
from plugins.elevenlabs.textbuffer import MAX_PIECE_CHARS, char_cost
from tests.fakes.engines import FakeToneEngine
from tests.faults.support import eventually

pytestmark = pytest.mark.anyio

Recorder = Callable[[str, str, float], None]
VOICE = "tone"
MULTI = f"/v1/text-to-speech/{VOICE}/multi-stream-input"
SINGLE = f"/v1/text-to-speech/{VOICE}/stream-input"
CLIENT_LOG = secret_safe_logger("tests.tts_abuse.client")  # the raw test clients' own logs


@dataclass(frozen=True)
class Piece:
    pcm: bytes
    sample_rate: int
    chars: tuple[str, ...]
    char_start_ms: tuple[float, ...]
    char_duration_ms: tuple[float, ...]


class BusyEngine:
    """A fake engine that burns `cpu_per_char` seconds of CPU per character, yielding one chunk
    per `chunk_chars` characters (5 ms of audio per character), and counts what it made."""

    sample_rate = 16000

    def __init__(self, cpu_per_char: float = 0.0004, chunk_chars: int = 20) -> None:
        self.cpu_per_char = cpu_per_char
        self.chunk_chars = chunk_chars
        self.chunks_made = 0
        self.longest_call = 0

    def voices(self) -> list[str]:
        return [VOICE]

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[Piece]:
        self.longest_call = max(self.longest_call, sum(map(char_cost, text)))
        for start in range(0, len(text), self.chunk_chars):
            part = text[start : start + self.chunk_chars]
            until = time.thread_time() + self.cpu_per_char * len(part)
            while time.thread_time() < until:
                pass
            self.chunks_made += 1
            n = len(part)
            yield Piece(
                b"\x00\x01" * (80 * n),
                self.sample_rate,
                tuple(part),
                tuple(5.0 * i for i in range(n)),
                (5.0,) * n,
            )


def url(server: LocalTTSServer, path: str = MULTI, query: str = "output_format=pcm_16000") -> str:
    return f"{server.url}{path}?{query}"


@asynccontextmanager
async def client(address: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with connect(address, logger=CLIENT_LOG, open_timeout=5, **kwargs) as ws:
        yield ws


async def first_audio(ws: ClientConnection, context_id: str, limit: float = 10.0) -> float:
    """Send a short sentence to a fresh context on an open socket; seconds to its first audio."""
    await ws.send(json.dumps({"text": " ", "context_id": context_id}))
    started = time.monotonic()
    await ws.send(json.dumps({"text": "Good client here. ", "context_id": context_id}))
    await ws.send(json.dumps({"context_id": context_id, "flush": True}))
    with anyio.fail_after(limit):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("audio") and frame.get("contextId") == context_id:
                ttfb = time.monotonic() - started
                break
        await ws.send(json.dumps({"context_id": context_id, "close_context": True}))
        while not (frame.get("isFinal") and frame.get("contextId") == context_id):
            frame = json.loads(await ws.recv())
    return ttfb


async def wait_for_error(ws: ClientConnection, limit: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(limit):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("error"):
                return dict(frame)


def process_cpu() -> float:
    return time.process_time()


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


# ------------------------------------------------------------------------------ 1. hang-ups


async def flood(ws: ClientConnection, sdk_style: bool, seconds: float = 1.0) -> int:
    """Send text as fast as the socket takes it for `seconds` (bounded: at most 4,000
    messages): the SDK's word-at-a-time single-context stream, or many small flushed
    messages on a multi-context socket. Returns the messages sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    if sdk_style:
        await ws.send(
            json.dumps({"text": " ", "generation_config": {"chunk_length_schedule": [50]}})
        )
    else:
        await ws.send(json.dumps({"text": " ", "context_id": "heavy"}))
    while time.monotonic() < deadline and sent < 4000:
        if sdk_style:
            msg = {"text": f"word{sent} ", "try_trigger_generation": True}
        else:
            msg = {
                "text": f"Sentence number {sent} is here. ",
                "context_id": "heavy",
                "flush": True,
            }
        await ws.send(json.dumps(msg))
        sent += 1
        if sent % 50 == 0:
            await anyio.lowlevel.checkpoint()
    return sent


async def test_clients_that_hang_up_mid_flood_cost_no_cpu_afterwards(recovery: Recorder) -> None:
    """Fault: two heavy clients stream text far faster than it can be spoken (one as the SDK
    does, a word at a time; one as many small flushed messages), then one closes its socket
    and the other vanishes without a close frame.

    Pass: within a moment of the hang-up the engine makes no more chunks; the process spends
    under 0.1 s of CPU in the 5 s after; a well-behaved client's time to first audio during
    the flood stays close to its time before.
    """
    engine = BusyEngine()
    async with LocalTTSServer(engine) as server, client(url(server)) as good:
        before = await first_audio(good, "g0")
        async with (
            client(url(server, SINGLE)) as sdk,
            client(url(server)) as multi,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(flood, sdk, True)
                tg.start_soon(flood, multi, False)
                await anyio.sleep(0.5)
                during = await first_audio(good, "g1")
            assert engine.chunks_made > 0
            await multi.close()  # hang up with a close frame ...
            assert sdk.transport is not None
            sdk.transport.abort()  # ... and without one (a TCP reset)
            hung_up = time.monotonic()
        assert await eventually(lambda: server.stats.active_connections <= 1)
        stopped_in = time.monotonic() - hung_up
        chunks_then, cpu_then = engine.chunks_made, process_cpu()
        await anyio.sleep(5.0)
        cpu_after = process_cpu() - cpu_then
        chunks_after = engine.chunks_made - chunks_then
        again = await first_audio(good, "g2")
    print(
        f"\nhang-up: connections gone {stopped_in * 1000:.0f} ms after; CPU in the 5 s after "
        f"{cpu_after:.3f} s; engine chunks after {chunks_after}; good client TTFB before "
        f"{before * 1000:.0f} ms, during {during * 1000:.0f} ms, after {again * 1000:.0f} ms"
    )
    assert chunks_after == 0
    assert cpu_after < 0.1
    assert during < max(4 * before, before + 0.25)
    recovery(
        "heavy clients hang up mid-flood (close frame / TCP reset)",
        f"work stops; {cpu_after:.3f} s CPU in the 5 s after; good TTFB "
        f"{before * 1000:.0f} -> {during * 1000:.0f} ms during",
        stopped_in,
    )


async def test_a_closed_context_stops_its_queued_work(recovery: Recorder) -> None:
    """Fault: a context is handed 20,000 characters (released by the schedule, never flushed),
    then closed. Pass: its queued pieces are dropped and the piece in progress is abandoned at
    the next engine chunk; its final comes promptly and the socket serves the next context."""
    engine = BusyEngine(cpu_per_char=0.001)
    async with LocalTTSServer(engine) as server, client(url(server)) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "big"}))
        for _ in range(20):
            await ws.send(json.dumps({"text": "word " * 200, "context_id": "big"}))
        assert await eventually(lambda: engine.chunks_made > 0)
        closed = time.monotonic()
        await ws.send(json.dumps({"context_id": "big", "close_context": True}))
        with anyio.fail_after(5):
            while not json.loads(await ws.recv()).get("isFinal"):
                pass
        final_in = time.monotonic() - closed
        made = engine.chunks_made
        ttfb = await first_audio(ws, "next")
    assert made * engine.chunk_chars < 2_000  # a sliver of the 20,000 characters
    assert final_in < 1.0
    recovery(
        "context closed with 20,000 queued characters",
        f"final after {final_in * 1000:.0f} ms; next TTFB {ttfb * 1000:.0f} ms",
        final_in,
    )


# ------------------------------------------------------------------------------ 2. bounded


async def test_a_20000_character_sentence_is_spoken_in_bounded_pieces(recovery: Recorder) -> None:
    """Fault: one 20,000-character message without punctuation (then a flush), on the fast
    tone engine. Pass: every engine call stays within MAX_PIECE_CHARS, the server's peak RSS
    grows under 50 MB while all of it is spoken, and a well-behaved client keeps its TTFB."""
    engine = FakeToneEngine()
    calls: list[int] = []
    original = engine.synthesize

    def counting(text: str, *, speed: float = 1.0) -> Iterator[Any]:
        calls.append(len(text))
        return original(text, speed=speed)

    engine.synthesize = counting  # type: ignore[method-assign]
    text = " ".join(f"w{i % 1000:03d}" for i in range(4000))[:20_000]
    async with (
        LocalTTSServer(engine) as server,
        client(url(server, query="output_format=pcm_22050")) as good,
    ):
        before = await first_audio(good, "g0")
        reset_peak_rss()
        base = rss_mb()
        async with client(url(server, query="output_format=pcm_22050"), max_size=None) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "long"}))
            started = time.monotonic()
            await ws.send(json.dumps({"text": text, "context_id": "long", "flush": True}))
            await ws.send(json.dumps({"context_id": "long", "close_context": True}))
            during: float | None = None
            samples = 0
            with anyio.fail_after(30):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame.get("isFinal"):
                        break
                    samples += len(frame.get("audio") or "") * 3 // 8
                    if during is None and samples > 22050 * 30:  # well into it
                        async with client(url(server, query="output_format=pcm_22050")) as other:
                            during = await first_audio(other, "g1")
            spoken_in = time.monotonic() - started
        growth = rss_mb("VmHWM") - base
    print(
        f"\n20,000 characters: {len(calls)} engine calls, longest {max(calls)} chars; peak RSS "
        f"+{growth:.1f} MB; {samples / 22050:.0f} s of audio in {spoken_in:.1f} s; good TTFB "
        f"{before * 1000:.0f} -> {(during or 0) * 1000:.0f} ms"
    )
    assert max(calls) <= MAX_PIECE_CHARS + 8 and len(calls) >= 20_000 // MAX_PIECE_CHARS
    assert samples / 22050 > 0.9 * len(text) * 0.020  # all of it was spoken (20 ms a char)
    assert growth < 50
    assert during is not None and during < max(4 * before, before + 0.25)
    recovery(
        "one 20,000-character unpunctuated message",
        f"{len(calls)} bounded engine calls, peak RSS +{growth:.1f} MB",
        spoken_in,
    )


async def test_a_connection_holding_too_much_text_gets_a_clear_error_frame() -> None:
    """Fault: text arrives faster than it is spoken until the connection holds over
    MAX_PENDING_CHARS. Pass: an error frame `text_buffer_full` that says what to do; the
    socket stays open and keeps speaking what it accepted."""
    engine = BusyEngine(cpu_per_char=0.002)
    async with LocalTTSServer(engine, max_pending_chars=5_000) as server, client(url(server)) as ws:
        await ws.send(json.dumps({"text": " ", "context_id": "c"}))
        for _ in range(8):
            await ws.send(json.dumps({"text": "word " * 200, "context_id": "c", "flush": True}))
        err = await wait_for_error(ws)
        assert err["error"] == "text_buffer_full"
        assert "5000" in err["message"] and "wait for audio" in err["message"]
        with anyio.fail_after(5):
            while not json.loads(await ws.recv()).get("audio"):
                pass


# ------------------------------------------------------------------------------ 3. hostile text


HOSTILE = {
    "NUL in text": ('{"text": "Hello\\u0000world ", "context_id": "h1", "flush": true}', None),
    "lone surrogate in text": (
        '{"text": "Hi \\ud800 ", "context_id": "h2", "flush": true}',
        "text",
    ),
    "lone surrogate in context_id": (
        '{"text": "Hi ", "context_id": "\\udc00x", "flush": true}',
        "context_id",
    ),
    "control character in context_id": (
        '{"text": "Hi ", "context_id": "a\\u0007", "flush": true}',
        "context_id",
    ),
    "surrogate in a key name": (
        '{"text": "Hi ", "context_id": "h5", "\\ud800": 1, "flush": true}',
        None,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_strings_get_an_error_frame_or_are_stripped_never_a_crash(
    case: str, recovery: Recorder
) -> None:
    """Fault: NUL, lone surrogates and control characters in text, context_id or key names.

    Pass: an `invalid_text` error frame naming the field (or, for silent control characters
    in spoken text, the text speaks without them); the socket keeps serving; no traceback.
    """
    raw, field = HOSTILE[case]
    async with LocalTTSServer(BusyEngine(cpu_per_char=0.0)) as server, client(url(server)) as ws:
        started = time.monotonic()
        await ws.send(raw)
        if field is not None:
            err = await wait_for_error(ws)
            answered = time.monotonic() - started
            assert err["error"] == "invalid_text" and err["message"].startswith(field)
        else:
            with anyio.fail_after(5):
                frame = json.loads(await ws.recv())
            answered = time.monotonic() - started
            assert frame.get("audio") and "\x00" not in "".join(frame["alignment"]["chars"])
        assert await first_audio(ws, "after") < 5
    recovery(
        f"hostile string: {case}",
        "error frame naming the field" if field else "stripped, spoken",
        answered,
    )


# ------------------------------------------------------------------------------ 4. secrets


async def test_no_key_a_client_sends_reaches_any_log_line_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: clients send keys every way (header, `authorization=Bearer` and `xi_api_key` in
    the query, `xi_api_key` and `xi-api-key` in the init message, a key in a fragmented
    message, a key at the end of a long message the socket library elides), to a server that
    accepts any key and to one that requires its own; all logging captured at DEBUG.

    Pass: no key, nor its first or last 8 characters, in any log line or exception text.
    """
    caplog.set_level(logging.DEBUG)
    keys = [f"sk_client_{n}_{'abcdefghijkl'[n:]}{n * 7919:08d}" for n in range(8)]
    async with LocalTTSServer(BusyEngine(cpu_per_char=0.0)) as server:
        async with client(url(server), additional_headers={"xi-api-key": keys[0]}) as ws:
            await first_audio(ws, "a")
        async with client(url(server, query=f"authorization=Bearer%20{keys[1]}")) as ws:
            await first_audio(ws, "b")
        async with client(url(server, query=f"output_format=pcm_16000&xi_api_key={keys[2]}")) as ws:
            await first_audio(ws, "c")
        async with client(url(server)) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "d", "xi_api_key": keys[3]}))
            await ws.send(json.dumps({"text": " ", "context_id": "e", "xi-api-key": keys[4]}))
            await ws.send(
                json.dumps({"text": "x " * 100, "context_id": "f", "xi_api_key": keys[5]})
            )
            init = json.dumps({"text": " ", "context_id": "g", "xi_api_key": keys[6]})
            await ws.send([init[:30], init[30:45], init[45:]])  # a fragmented message
            await first_audio(ws, "h")
    async with LocalTTSServer(
        BusyEngine(cpu_per_char=0.0), api_key="sk_server_own_key_123456"
    ) as strict:
        with pytest.raises(InvalidStatus):
            async with client(url(strict), additional_headers={"xi-api-key": keys[7]}):
                pass
        async with client(url(strict)) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "z", "xi_api_key": keys[7] + "x"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
    lines = [r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records]
    lines.append(caplog.text)
    assert any("xi_api_key" in line or "xi-api-key" in line for line in lines)  # it was logged
    for key in [*keys, "sk_server_own_key_123456"]:
        for part in (key, key[:8], key[-8:]):
            leaks = [line for line in lines if part in line]
            assert not leaks, (part, leaks[:2])


# ------------------------------------------------------------------------------ 5. exposure


async def test_connection_caps_refuse_clearly_and_spare_those_served(recovery: Recorder) -> None:
    """Fault: a client opens socket after socket (keep-alives would hold them forever).

    Pass: beyond 2 per address, and beyond 3 in all, HTTP 503 saying which limit and what to
    do; the sockets already served keep speaking; a closed socket frees its place.
    """
    engine = BusyEngine(cpu_per_char=0.0)
    async with LocalTTSServer(engine, max_connections=3, max_connections_per_address=2) as server:
        address = url(server)
        async with client(address) as one, client(address) as two:
            started = time.monotonic()
            with pytest.raises(InvalidStatus) as per_address:
                async with client(address):
                    pass
            refused_in = time.monotonic() - started
            assert per_address.value.response.status_code == 503
            assert b"from your address" in per_address.value.response.body
            async with client(address, local_addr=("127.0.0.2", 0)) as three:
                with pytest.raises(InvalidStatus) as total:
                    async with client(address, local_addr=("127.0.0.3", 0)):
                        pass
                assert total.value.response.status_code == 503
                assert b"at most 3" in total.value.response.body
                assert await first_audio(three, "t") < 5
            assert await first_audio(one, "o") < 5
            await two.close()
            assert await eventually(lambda: server.stats.active_connections <= 1)
            async with client(address) as again:
                assert await first_audio(again, "a") < 5
        assert server.stats.refused_connections == 2
    recovery(
        "too many sockets (3 in all, 2 per address)",
        "HTTP 503 naming the limit; served sockets unaffected",
        refused_in,
    )


async def test_a_required_key_is_checked_every_way_it_can_come() -> None:
    key = "sk_required_key_987654"
    async with LocalTTSServer(BusyEngine(cpu_per_char=0.0), api_key=key) as server:
        async with client(url(server), additional_headers={"xi-api-key": key}) as ws:
            assert await first_audio(ws, "header") < 5
        async with client(
            url(server, query=f"output_format=pcm_16000&authorization=Bearer%20{key}")
        ) as ws:
            assert await first_audio(ws, "query") < 5
        async with client(url(server)) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "m", "xi_api_key": key}))
            assert await first_audio(ws, "message") < 5
        with pytest.raises(InvalidStatus) as wrong:
            async with client(url(server), additional_headers={"xi-api-key": "sk_wrong_key_00000"}):
                pass
        assert wrong.value.response.status_code == 401
        async with client(url(server)) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "n"}))
            err = await wait_for_error(ws)
            assert err["error"] == "missing_api_key" and "xi-api-key" in err["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_binding_beyond_loopback_needs_a_key_or_an_explicit_override() -> None:
    engine = BusyEngine()
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(ValueError, match="--api-key"):
            LocalTTSServer(engine, host=host)
        LocalTTSServer(engine, host=host, api_key="sk_some_key_123456")  # constructs, binds nothing
        LocalTTSServer(engine, host=host, allow_public_without_key=True)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        LocalTTSServer(engine, host=host)


async def test_after_a_fatal_close_the_tcp_connection_closes_promptly(recovery: Recorder) -> None:
    """Fault: a client floods frames, one of which is fatal (a sixth context), and goes on
    sending without reading. Pass: the close frame comes and the TCP connection is closed in
    well under a second (it used to wait the 10 s close timeout)."""
    async with LocalTTSServer(BusyEngine(cpu_per_char=0.0)) as server, client(url(server)) as ws:
        for n in range(5):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{n}"}))
        started = time.monotonic()
        await ws.send(json.dumps({"text": " ", "context_id": "c5"}))  # the sixth: fatal 1008
        try:
            for n in range(300):
                await ws.send(json.dumps({"text": f"more {n} ", "context_id": "c0"}))
        except ConnectionClosed:
            pass
        with anyio.fail_after(5):
            await ws.wait_closed()
        closed_in = time.monotonic() - started
        assert ws.close_code == 1008
        assert await eventually(lambda: server.stats.active_connections == 0)
    assert closed_in < 1.0
    recovery("flood past a fatal 1008", "close frame and TCP close at once", closed_in)


def test_loopback_aliases_are_usable_here() -> None:
    """The per-address test connects from 127.0.0.2 and 127.0.0.3 (Linux routes all of
    127.0.0.0/8 to loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
