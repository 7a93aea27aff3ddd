"""Fault 2: a long idle session must never be closed for inactivity (1008).

The server closes an idle socket, and an idle context, after its inactivity_timeout (20 s by
default); only the client's keep-alives hold them open. Both sides' timers are protocol timers
(`next_deadline()` / `tick(now)`), so the minute of silence is run on a virtual clock: the
client protocol's frames go straight into the server protocol, time is passed in, nothing
sleeps. One short real-socket check (a 1 s server timeout) shows the I/O layers run those
timers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import anyio
import pytest

from plugins.elevenlabs.client import ElevenLabsTTS, TTSConfig
from plugins.elevenlabs.protocol import (
    INACTIVITY_REASON,
    ClientProtocol,
    ContextEnded,
    ServerEvent,
    ServerProtocol,
    SocketEnding,
    StreamParams,
    Synthesize,
)
from plugins.elevenlabs.server import LocalTTSServer
from tests.fakes.engines import FakeToneEngine

Recorder = Callable[[str, str, float], None]
SOCKET_IDLE_S = 35.0  # between turns: no context open
CONTEXT_IDLE_S = 25.0  # a turn whose LLM says nothing for this long: a context open, no text
PATH = "/v1/text-to-speech/v/multi-stream-input"


class Wire:
    """A client protocol wired to a server protocol on a virtual clock."""

    def __init__(self, keepalive_interval: float | None) -> None:
        self.now = 0.0
        self.client = ClientProtocol(keepalive_interval=keepalive_interval, now=0.0)
        self.server = ServerProtocol(StreamParams.from_path_and_query(PATH, {}), 0.0)
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.events: list[tuple[float, ServerEvent]] = []

    def deliver(self) -> None:
        for frame in self.client.data_to_send():
            self.sent.append((self.now, json.loads(frame)))
            self.events.extend((self.now, e) for e in self.server.receive(frame, self.now))

    def advance(self, seconds: float) -> None:
        """Run both sides' timers up to `seconds` from now, each at its own deadline."""
        until = self.now + seconds
        while True:
            due = [d for d in (self.client.next_deadline(), self.server.next_deadline()) if d]
            step = min(due, default=until)
            if step > until:
                break
            self.now = step
            self.client.tick(self.now)
            self.deliver()
            self.events.extend((self.now, e) for e in self.server.tick(self.now))
            if self.server.closed:
                return
        self.now = until

    def closes(self) -> list[SocketEnding]:
        return [e for _, e in self.events if isinstance(e, SocketEnding)]


def test_idle_minute_is_kept_alive_by_protocol_timers() -> None:
    """Fault: 35 s with no turn, then a turn whose LLM takes 25 s to say its first word,
    against a server that closes idle sockets and contexts after 20 s.

    Pass: no inactivity close ever; bare `{"text": ""}` keep-alives went out between turns
    (never 20 s apart) and context keep-alives while the context waited; the late text is then
    synthesized. Virtual time: the minute takes microseconds.
    """
    wire = Wire(keepalive_interval=10.0)
    wire.advance(SOCKET_IDLE_S)
    wire.client.open_context("turn", wire.now)
    wire.deliver()
    wire.advance(CONTEXT_IDLE_S)
    wire.client.send_text("turn", "Still here.", wire.now, flush=True)
    wire.deliver()

    assert wire.closes() == [] and not wire.server.closed
    assert not [e for _, e in wire.events if isinstance(e, ContextEnded)]
    said = [e.text for _, e in wire.events if isinstance(e, Synthesize)]
    assert said == ["Still here."]
    socket_keepalives = [t for t, m in wire.sent if m == {"text": ""}]
    context_keepalives = [t for t, m in wire.sent if m == {"text": "", "context_id": "turn"}]
    assert len(socket_keepalives) >= 3 and len(context_keepalives) >= 2
    assert max(b - a for a, b in pairwise([0.0, *socket_keepalives])) < 20
    assert max(b - a for a, b in pairwise(context_keepalives)) < 20


def test_without_keepalives_the_same_silence_is_closed_at_20_s() -> None:
    """The control: the same server closes a silent socket with the service's reason."""
    wire = Wire(keepalive_interval=None)
    wire.advance(SOCKET_IDLE_S)
    assert wire.closes() == [SocketEnding(1008, INACTIVITY_REASON(20.0))]
    assert wire.now == 20.0


@pytest.mark.anyio
async def test_real_socket_idles_past_a_short_server_timeout(recovery: Recorder) -> None:
    """The one real-socket check: a 1 s server timeout, 2.5 s of silence between turns and
    1.5 s in an open context. Pass: one connection, no error frame, no reconnect; the turn
    speaks."""
    config = TTSConfig(voice_id="tone", output_format="pcm_16000", inactivity_timeout=1.0)
    async with LocalTTSServer(FakeToneEngine()) as server:
        async with ElevenLabsTTS(config, base_url=server.url) as tts:
            with anyio.fail_after(10):
                await anyio.sleep(2.5)
                ctx = await tts.open_context()
                await anyio.sleep(1.5)
                started = time.monotonic()
                await ctx.send("Still here. ", flush=True)
                await ctx.close()
                audio = b"".join([chunk.pcm async for chunk in ctx.chunks()])
                spoke = time.monotonic() - started
            sock = tts._socket
            assert sock is not None and sock.alive
        assert tts.reconnects == 0
        assert server.stats.connections == 1 and server.stats.errors_sent == 0
    assert len(audio) > 0
    recovery(
        "4 s idle on a socket with a 1 s server timeout (2.5 s between turns, 1.5 s in a context)",
        "no 1008, no reconnect; time to the turn's audio and final",
        spoke,
    )
