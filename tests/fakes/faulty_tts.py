"""ScriptedTTSServer: a real ElevenLabs-protocol WebSocket server on 127.0.0.1 that plays scripts.

It exists to inject faults our real :class:`~plugins.elevenlabs.server.LocalTTSServer` never
produces on purpose: a TCP connection dropped mid-turn without a close frame, malformed frames,
handshakes refused with 401/403/5xx, dropped or stalled handshakes. Each accepted connection takes
the next :data:`Plan` from the list it was given (the ``default`` plan once the list is used up):

- :class:`Refuse` / :class:`StallHandshake` / :class:`DropHandshake` act on the opening handshake;
- :class:`Script` plays steps after the handshake: :class:`Expect` waits for a client frame,
  :class:`SendAudio` / :class:`SendFinal` / :class:`SendRaw` write frames, :class:`Abort` drops
  the TCP connection with no close frame, :class:`Pause` stalls, :class:`CloseWith` closes
  cleanly, and :class:`Respond` serves the rest of the connection like a simple conforming server
  (deterministic audio: :data:`MS_PER_CHAR` of a known waveform per character, with alignment).

Every handshake attempt is time-stamped (``attempts``) and every client frame recorded per
connection (``connections[i].frames``), so tests can count retries and check the wire.

    async with ScriptedTTSServer([Script((Expect("flush"), SendAudio(pcm), Abort()))]) as fake:
        async with ElevenLabsTTS(TTSConfig(), base_url=fake.url) as tts: ...
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "CURRENT",
    "MS_PER_CHAR",
    "Abort",
    "CloseWith",
    "DropHandshake",
    "Expect",
    "Pause",
    "Plan",
    "Refuse",
    "Respond",
    "Script",
    "ScriptedConnection",
    "ScriptedTTSServer",
    "SendAudio",
    "SendFinal",
    "SendRaw",
    "StallHandshake",
    "Step",
    "audio_frame",
    "tone_pcm",
]

log = logging.getLogger("tests.fakes.faulty_tts")

#: Audio per character in :class:`Respond` mode.
MS_PER_CHAR = 10.0
#: Stands for "the context the client named last" in a step's ``context``.
CURRENT = "<current>"


# --------------------------------------------------------------------------- handshake plans
@dataclass(frozen=True)
class Refuse:
    """Refuse the handshake with an HTTP status (401/403: bad key, 5xx: server trouble)."""

    status: int
    body: str = "refused by the script"


@dataclass(frozen=True)
class StallHandshake:
    """Hold the handshake for ``seconds`` without answering (then refuse with 503)."""

    seconds: float = 60.0


@dataclass(frozen=True)
class DropHandshake:
    """Drop the TCP connection before answering the handshake."""


# --------------------------------------------------------------------------- script steps
@dataclass(frozen=True)
class Expect:
    """Wait until the client has sent ``count`` frames holding ``key`` (e.g. "flush",
    "close_context"; "text" counts every frame with a non-empty text)."""

    key: str = "text"
    count: int = 1
    timeout: float = 10.0


@dataclass(frozen=True)
class SendAudio:
    """An audio frame carrying ``pcm`` (base64), with alignment for ``chars`` when given."""

    pcm: bytes
    chars: str | None = None
    context: str | None = CURRENT


@dataclass(frozen=True)
class SendFinal:
    """``{"isFinal": true, "contextId": ...}``."""

    context: str | None = CURRENT


@dataclass(frozen=True)
class SendRaw:
    """A frame written as is (text or binary): the way to send malformed frames."""

    data: str | bytes


@dataclass(frozen=True)
class Abort:
    """Drop the TCP connection at once, without a close frame (the peer sees code 1006)."""


@dataclass(frozen=True)
class Pause:
    """Send nothing for ``seconds`` (the connection stays open)."""

    seconds: float


@dataclass(frozen=True)
class CloseWith:
    """Close the socket cleanly with ``code`` and ``reason``."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class Respond:
    """Serve the rest of the connection like a conforming multi/single-context server."""


Step = Expect | SendAudio | SendFinal | SendRaw | Abort | Pause | CloseWith | Respond


@dataclass(frozen=True)
class Script:
    """Steps played in order after the handshake. When they run out the socket stays open."""

    steps: tuple[Step, ...]


Plan = Refuse | StallHandshake | DropHandshake | Script


# --------------------------------------------------------------------------- audio helpers
def tone_pcm(n_chars: int, rate: int, *, seed: int = 0) -> bytes:
    """Deterministic PCM16: MS_PER_CHAR per character of a ramp that never repeats a sample
    pair, so a one-byte misalignment anywhere would change the bytes."""
    n = round(n_chars * MS_PER_CHAR / 1000 * rate)
    samples = (np.arange(n, dtype=np.int64) * 37 + seed * 1009) % 20011 - 10005
    return samples.astype("<i2").tobytes()


def audio_frame(
    pcm: bytes, context_id: str | None, chars: str | None = None, *, rate: int = 16000
) -> str:
    """A well-formed audio frame (alignment spread evenly over ``pcm`` when ``chars`` given)."""
    alignment: dict[str, Any] | None = None
    if chars:
        per = len(pcm) / 2 / rate * 1000 / len(chars)
        alignment = {
            "chars": list(chars),
            "charStartTimesMs": [round(i * per) for i in range(len(chars))],
            "charDurationsMs": [round(per)] * len(chars),
        }
    obj: dict[str, Any] = {
        "audio": base64.b64encode(pcm).decode("ascii"),
        "isFinal": None,
        "normalizedAlignment": alignment,
        "alignment": alignment,
    }
    if context_id is not None:
        obj["contextId"] = context_id
    return json.dumps(obj)


# --------------------------------------------------------------------------- connection state
@dataclass
class ScriptedConnection:
    """What one accepted connection saw: its path, query and every client frame (parsed), and
    when the script dropped it (``aborted_at``)."""

    index: int
    path: str
    query: dict[str, str]
    frames: list[dict[str, Any]] = field(default_factory=list)
    raw_frames: int = 0
    closed_at: float | None = None
    aborted_at: float | None = None
    current: str | None = None
    responding: bool = False
    buffers: dict[str | None, str] = field(default_factory=dict)
    finalled: set[str | None] = field(default_factory=set)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    @property
    def multi(self) -> bool:
        return self.path.endswith("/multi-stream-input")

    @property
    def sample_rate(self) -> int:
        fmt = self.query.get("output_format", "pcm_16000")
        try:
            return int(fmt.split("_")[1])
        except (IndexError, ValueError):
            return 16000

    def count(self, key: str) -> int:
        if key == "text":
            return sum(1 for f in self.frames if f.get("text"))
        return sum(1 for f in self.frames if f.get(key) not in (None, False))

    def _record(self, data: str | bytes) -> dict[str, Any] | None:
        self.raw_frames += 1
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            self.frames.append(obj)
            cid = obj.get("context_id")
            if isinstance(cid, str):
                self.current = cid
        self._arrived.set()
        self._arrived = anyio.Event()
        return obj if isinstance(obj, dict) else None


# --------------------------------------------------------------------------- the server
class ScriptedTTSServer:
    """The fake server. ``plans[i]`` drives handshake attempt ``i``; ``default`` after them.

    ``attempts`` holds the monotonic time of every handshake attempt (refused ones included);
    ``connections`` every connection that got past the handshake.
    """

    def __init__(self, plans: Sequence[Plan] = (), *, default: Plan | None = None) -> None:
        self.plans = list(plans)
        self.default: Plan = default or Script((Respond(),))
        self.attempts: list[float] = []
        self.connections: list[ScriptedConnection] = []
        self.port = 0
        self._server: Server | None = None
        self._plan_of: dict[int, Plan] = {}
        self._closing = anyio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedTTSServer:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            max_size=None,
            compression=None,
            logger=logging.getLogger("tests.fakes.faulty_tts.ws"),
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._server is not None:
            with anyio.CancelScope(shield=True):
                self._server.close()
                with anyio.move_on_after(3):
                    await self._server.wait_closed()
            self._server = None

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        index = len(self.attempts)
        self.attempts.append(time.monotonic())
        plan = self.plans[index] if index < len(self.plans) else self.default
        self._plan_of[id(ws)] = plan
        if isinstance(plan, Refuse):
            return ws.respond(plan.status, plan.body + "\n")
        if isinstance(plan, StallHandshake):
            with anyio.move_on_after(plan.seconds):
                await self._closing.wait()  # leaving the server ends a stall at once
            return ws.respond(503, "stalled\n")
        if isinstance(plan, DropHandshake):
            ws.transport.abort()
            return ws.respond(500, "dropped\n")  # never reaches the client
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        plan = self._plan_of.pop(id(ws), self.default)
        assert isinstance(plan, Script), plan
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        conn = ScriptedConnection(len(self.connections), split.path, dict(parse_qsl(split.query)))
        self.connections.append(conn)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, ws, conn)
                await self._play(ws, conn, plan.steps)
                await ws.wait_closed()
                tg.cancel_scope.cancel()
        except ConnectionClosed:
            pass
        finally:
            conn.closed_at = time.monotonic()

    async def _reader(self, ws: ServerConnection, conn: ScriptedConnection) -> None:
        """Record client frames (Respond mode answers them itself)."""
        try:
            async for data in ws:
                obj = conn._record(data)
                if conn.responding and obj is not None:
                    await self._answer(ws, conn, obj)
        except ConnectionClosed:
            pass

    async def _play(
        self, ws: ServerConnection, conn: ScriptedConnection, steps: Sequence[Step]
    ) -> None:
        for step in steps:
            if isinstance(step, Expect):
                with anyio.fail_after(step.timeout):
                    while conn.count(step.key) < step.count:
                        await conn._arrived.wait()
            elif isinstance(step, SendAudio):
                cid = self._cid(conn, step.context)
                await ws.send(audio_frame(step.pcm, cid, step.chars, rate=conn.sample_rate))
            elif isinstance(step, SendFinal):
                cid = self._cid(conn, step.context)
                conn.finalled.add(cid)
                await ws.send(_final(cid))
            elif isinstance(step, SendRaw):
                await ws.send(step.data)
            elif isinstance(step, Abort):
                conn.aborted_at = time.monotonic()
                ws.transport.abort()
                return
            elif isinstance(step, Pause):
                await anyio.sleep(step.seconds)
            elif isinstance(step, CloseWith):
                await ws.close(step.code, step.reason)
                return
            else:  # Respond
                conn.responding = True
                for obj in list(conn.frames):  # answer what already arrived
                    await self._answer(ws, conn, obj)
                return

    def _cid(self, conn: ScriptedConnection, context: str | None) -> str | None:
        if not conn.multi:
            return None
        return conn.current if context == CURRENT else context

    async def _answer(
        self, ws: ServerConnection, conn: ScriptedConnection, obj: dict[str, Any]
    ) -> None:
        """A minimal conforming server: text buffers per context, flush speaks, close finals."""
        buffers = conn.buffers
        cid = obj.get("context_id") if conn.multi else None
        if cid in conn.finalled:
            return  # the script already ended this context
        if conn.multi and obj.get("close_socket"):
            for key in list(buffers):
                await self._speak(ws, conn, key, buffers.pop(key))
                await ws.send(_final(key))
            await ws.close(1000, "")
            return
        text = obj.get("text")
        if not conn.multi and text == "" and None in buffers:
            await self._speak(ws, conn, None, buffers.pop(None))
            await ws.send(_final(None))
            await ws.close(1000, "")
            return
        if cid not in buffers and (text is not None or obj.get("flush")):
            buffers[cid] = ""
        if cid not in buffers:
            return
        if isinstance(text, str) and text.strip():
            buffers[cid] += text
        if obj.get("flush"):
            await self._speak(ws, conn, cid, buffers[cid])
            buffers[cid] = ""
        if conn.multi and obj.get("close_context"):
            buffers.pop(cid, None)
            await ws.send(_final(cid))

    async def _speak(
        self, ws: ServerConnection, conn: ScriptedConnection, cid: str | None, text: str
    ) -> None:
        text = text.strip()
        if not text:
            return
        pcm = tone_pcm(len(text), conn.sample_rate)
        await ws.send(audio_frame(pcm, cid, text, rate=conn.sample_rate))


def _final(context_id: str | None) -> str:
    obj: dict[str, Any] = {"isFinal": True}
    if context_id is not None:
        obj["contextId"] = context_id
    return json.dumps(obj)
