"""A local server that speaks the ElevenLabs text-to-speech WebSocket protocol.

Any ElevenLabs client, ours or anyone's, can point its base URL at it (``ws://127.0.0.1:8765``)
and talk ``/v1/text-to-speech/{voice_id}/stream-input`` or ``.../multi-stream-input``. All protocol
rules live in :mod:`plugins.elevenlabs.protocol` (sans-I/O); this module only moves frames between
the socket, that state machine and a speech engine, and runs synthesis off the event loop.

Per connection, three kinds of task share one task group:

- the reader feeds client frames to the protocol and routes its events;
- one synthesis worker per context turns queued text into audio frames, in order;
- a timer fires the protocol's inactivity deadlines.

Cancelling :meth:`LocalTTSServer.serve` (or leaving its ``async with``) stops accepting, closes
every connection with 1001 and waits for their tasks.

Model ids: the server has one engine, so it accepts any ``model_id`` a client asks for and speaks
with that engine; the first one requested is noted once in a DEBUG log line (clients written for
the real service always send one, so anything louder would be noise).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.audio import resample
from agent.redact import redacting_logger, register_secret
from plugins.elevenlabs.client import DEFAULT_VOICE_ID
from plugins.elevenlabs.formats import Encoder, OutputFormat, parse_output_format
from plugins.elevenlabs.protocol import (
    Alignment,
    Close,
    ContextEnded,
    ContextStarted,
    Flushed,
    ProtocolError,
    Secret,
    ServerProtocol,
    SocketEnding,
    StreamParams,
    Synthesize,
)

log = logging.getLogger("voxloop.tts_server")

#: Largest frame the socket layer accepts. Frames above the protocol's own limit but below this
#: get an error frame and the connection lives on; above this the socket closes with 1009.
SOCKET_MAX_FRAME = 4 * 1024 * 1024
#: Longest audio carried by one frame, so frames stay far below clients' 1 MiB default limit.
MAX_FRAME_SECONDS = 1.0
#: How many recent contexts' timings `ServerStats` keeps.
STATS_WINDOW = 1000
#: A context's first frame is short, so its bytes leave after encoding only this much.
FIRST_FRAME_SECONDS = 0.2


class SpeechPiece(Protocol):
    """What an engine yields: PCM16 mono plus per-character alignment relative to the piece."""

    @property
    def pcm(self) -> bytes: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def chars(self) -> tuple[str, ...]: ...
    @property
    def char_start_ms(self) -> tuple[float, ...]: ...
    @property
    def char_duration_ms(self) -> tuple[float, ...]: ...


@dataclass(frozen=True, slots=True)
class EngineChunk:
    """A concrete :class:`SpeechPiece` (what :func:`split_chunk` makes)."""

    pcm: bytes
    sample_rate: int
    chars: tuple[str, ...]
    char_start_ms: tuple[float, ...]
    char_duration_ms: tuple[float, ...]


class SpeechEngine(Protocol):
    """A blocking text-to-speech engine, e.g. :class:`plugins.local.piper_tts.PiperEngine`."""

    @property
    def sample_rate(self) -> int: ...

    def voices(self) -> list[str]: ...

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[SpeechPiece]: ...


@dataclass
class ServerStats:
    """Counters a test or a benchmark can read. The per-context series keep the most recent
    `STATS_WINDOW` entries, so a server that runs for days does not grow."""

    connections: int = 0
    active_connections: int = 0
    frames_in: int = 0
    audio_frames_out: int = 0
    errors_sent: int = 0
    engine_first_chunk_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    first_frame_sent_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    contexts: deque[ContextTiming] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    abandoned_items: int = 0  # queued text of closed contexts not synthesized


def split_chunk(
    chunk: SpeechPiece, max_seconds: float, *, head_seconds: float | None = None
) -> list[SpeechPiece]:
    """Cut an engine chunk into frames of at most ``max_seconds`` (the first one at most
    ``head_seconds`` when given, so the first bytes go out sooner), re-basing alignment."""
    n_samples = len(chunk.pcm) // 2
    limit = max(1, int(max_seconds * chunk.sample_rate))
    head = max(1, int((head_seconds or max_seconds) * chunk.sample_rate))
    if n_samples <= min(limit, head):
        return [chunk]
    bounds = [0, min(head, n_samples)]
    while bounds[-1] < n_samples:
        bounds.append(min(n_samples, bounds[-1] + limit))
    pieces: list[SpeechPiece] = []
    for first, last in itertools.pairwise(bounds):
        start_ms = first * 1000.0 / chunk.sample_rate
        end_ms = last * 1000.0 / chunk.sample_rate
        picked = [
            i
            for i, s in enumerate(chunk.char_start_ms)
            if start_ms <= s < end_ms or (last == n_samples and s >= end_ms)
        ]
        pieces.append(
            EngineChunk(
                pcm=chunk.pcm[first * 2 : last * 2],
                sample_rate=chunk.sample_rate,
                chars=tuple(chunk.chars[i] for i in picked),
                char_start_ms=tuple(chunk.char_start_ms[i] - start_ms for i in picked),
                # a character never outlasts its frame, so clients' running offsets stay exact
                char_duration_ms=tuple(
                    max(0.0, min(chunk.char_duration_ms[i], end_ms - chunk.char_start_ms[i]))
                    if last < n_samples
                    else chunk.char_duration_ms[i]
                    for i in picked
                ),
            )
        )
    return pieces


def resample_piece(chunk: SpeechPiece, rate: int) -> SpeechPiece:
    """The same speech at ``rate`` (one-shot resampling; alignment unchanged)."""
    if chunk.sample_rate == rate:
        return chunk
    return EngineChunk(
        pcm=resample(chunk.pcm, chunk.sample_rate, rate),
        sample_rate=rate,
        chars=chunk.chars,
        char_start_ms=chunk.char_start_ms,
        char_duration_ms=chunk.char_duration_ms,
    )


#: A context's first text longer than this is split so its head is synthesized on its own.
FIRST_PIECE_MAX_CHARS = 48
_CLAUSE_END = re.compile(r"[,;:\u2014]\s")


def split_for_first_audio(text: str, limit: int = FIRST_PIECE_MAX_CHARS) -> list[str]:
    """Split a context's first text so the first audio comes sooner.

    Engines synthesize a sentence at a time, so time to first byte grows with the first
    sentence. A long head is cut at the first clause break within ``limit`` characters, else at
    the last word break before it; the pieces join back to ``text`` exactly.
    """
    if len(text) <= limit:
        return [text]
    clause = _CLAUSE_END.search(text, 12, limit + 1)
    cut = clause.end() if clause else text.rfind(" ", 12, limit) + 1
    if cut <= 0 or not text[cut:].strip():
        return [text]
    return [text[:cut], text[cut:]]


def alignment_for(chunk: SpeechPiece) -> Alignment | None:
    """The wire alignment of one chunk (integer milliseconds, relative to the chunk)."""
    if not chunk.chars:
        return None
    return Alignment(
        chars=chunk.chars,
        char_start_times_ms=tuple(round(s) for s in chunk.char_start_ms),
        char_durations_ms=tuple(max(0, round(d)) for d in chunk.char_duration_ms),
    )


@dataclass
class _ContextWork:
    """A context's synthesis queue and what may be dropped from it once it is closed."""

    queue: MemoryObjectSendStream[tuple[int, Synthesize] | ContextEnded]
    sent: int = 0  # Synthesize items queued so far (their sequence numbers are 1..sent)
    flushed_upto: int = 0  # the last item released by a flush: it and all before must play
    ended: bool = False  # no more text will come (close_context, "", close_socket, timeout)

    def wanted(self, seq: int) -> bool:
        """Still to be spoken? Once ended, only text up to the last flush is (the protocol lets
        a queued flush finish; schedule-released text of a closed context is abandoned)."""
        return not self.ended or seq <= self.flushed_upto


@dataclass
class ContextTiming:
    """When a context's first synthesis started, its engine's first chunk and first frame
    (monotonic seconds; the voice-to-voice benchmark reads these)."""

    context_id: str | None
    first_synthesize_at: float | None = None
    engine_first_chunk_s: float | None = None
    first_frame_at: float | None = None


class _Connection:
    """One client socket: the protocol, its workers and its sends."""

    def __init__(
        self,
        server: LocalTTSServer,
        ws: ServerConnection,
        params: StreamParams,
        fmt: OutputFormat,
        header_key: Secret | None,
    ) -> None:
        self.server = server
        self.ws = ws
        self.params = params
        self.fmt = fmt
        self.protocol = ServerProtocol(params, time.monotonic(), header_api_key=header_key)
        self.send_lock = anyio.Lock()
        self.work: dict[str | None, _ContextWork] = {}
        self.wake_timer = anyio.Event()
        self.timer_deadline: float | None = None  # what the timer sleeps toward (None: nothing)
        self.peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"

    async def run(self) -> None:
        """Serve the connection until it closes. Cancelling closes the socket with 1001."""
        async with anyio.create_task_group() as tg:
            self.tg = tg
            tg.start_soon(self._timer)
            try:
                await self._read_loop()
            finally:
                tg.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        while not self.protocol.closed:
            try:
                data = await self.ws.recv()
            except ConnectionClosed:
                return
            self.server.stats.frames_in += 1
            events = self.protocol.receive(data, time.monotonic())
            await self._handle(events)
            self._rearm_timer()

    def _rearm_timer(self) -> None:
        """Wake the timer if the protocol's next deadline is sooner than the one it sleeps
        toward. Activity only pushes inactivity deadlines later, so most frames wake nothing
        (waking it for every frame made a flood of tiny frames cost twice the CPU)."""
        deadline = self.protocol.next_deadline()
        if deadline is not None and (self.timer_deadline is None or deadline < self.timer_deadline):
            self.wake_timer.set()

    async def _handle(self, events: Sequence[object]) -> None:
        for event in events:
            if isinstance(event, ContextStarted):
                self._start_context(event.context_id)
                if event.api_key is not None and not self.server.accepts_key(event.api_key):
                    self.protocol.send_error(
                        ProtocolError("Invalid API key.", code=1008, error="invalid_api_key")
                    )
                    await self._send_pending()
                    await self.ws.close(1008, "Invalid API key.")
                    return
            elif isinstance(event, Synthesize):
                work = self.work.get(event.context_id) or self._start_context(event.context_id)
                work.sent += 1
                await work.queue.send((work.sent, event))
            elif isinstance(event, Flushed):
                flushed = self.work.get(event.context_id)
                if flushed is not None:
                    flushed.flushed_upto = flushed.sent
            elif isinstance(event, ContextEnded):
                if event.context_id in self.work:
                    work = self.work.pop(event.context_id)
                else:
                    work = self._start_context(event.context_id, register=False)
                work.ended = True  # seen at once by the worker, even mid-item
                await work.queue.send(event)
                work.queue.close()
            elif isinstance(event, SocketEnding):
                log.info("closing %s: %s %s", self.peer, event.code, event.reason)
        await self._send_pending()

    def _start_context(self, context_id: str | None, *, register: bool = True) -> _ContextWork:
        existing = self.work.get(context_id)
        if existing is not None:
            return existing
        send, receive = anyio.create_memory_object_stream[tuple[int, Synthesize] | ContextEnded](64)
        work = _ContextWork(send)
        if register:
            self.work[context_id] = work
        self.tg.start_soon(self._synthesis_worker, context_id, work, receive)
        return work

    async def _synthesis_worker(
        self,
        context_id: str | None,
        work: _ContextWork,
        queue: MemoryObjectReceiveStream[tuple[int, Synthesize] | ContextEnded],
    ) -> None:
        """Synthesize one context's text in order; then send its final message. Text a
        closed context no longer wants is skipped, and stopped between engine chunks."""
        encoder = Encoder(self.fmt, self.fmt.sample_rate)  # audio arrives resampled
        first = True
        timing = ContextTiming(context_id)
        self.server.stats.contexts.append(timing)
        async with queue:
            async for entry in queue:
                if isinstance(entry, ContextEnded):
                    tail = encoder.finish()
                    if tail:
                        await self._send_audio(context_id, tail, None)
                    self.protocol.send_final(context_id)
                    await self._send_pending()
                    self._rearm_timer()  # the last final arms the socket's own idle timer
                    return
                seq, item = entry
                if not work.wanted(seq):
                    self.server.stats.abandoned_items += 1
                    continue
                speed = (item.voice_settings.speed if item.voice_settings else None) or 1.0
                started = time.monotonic()
                if first:
                    timing.first_synthesize_at = started
                pieces = split_for_first_audio(item.text) if first else [item.text]
                async for chunk in self._engine_chunks(pieces, speed):
                    if first:
                        timing.engine_first_chunk_s = time.monotonic() - started
                        self.server.stats.engine_first_chunk_s.append(timing.engine_first_chunk_s)
                    head = FIRST_FRAME_SECONDS if first else None
                    frames = split_chunk(chunk, MAX_FRAME_SECONDS, head_seconds=head)
                    for frame in frames:
                        # resampling and encoding run off the event loop, like synthesis
                        audio = await anyio.to_thread.run_sync(
                            encoder.encode, frame.pcm, limiter=self.server.limiter
                        )
                        await self._send_audio(context_id, audio, alignment_for(frame))
                    if first:
                        timing.first_frame_at = time.monotonic()
                        self.server.stats.first_frame_sent_s.append(timing.first_frame_at - started)
                        first = False
                    if not work.wanted(seq):
                        self.server.stats.abandoned_items += 1
                        break  # closed meanwhile: the rest of this text is not wanted
                if item.flush:
                    tail = encoder.finish()
                    encoder = Encoder(self.fmt, self.fmt.sample_rate)
                    if tail:
                        await self._send_audio(context_id, tail, None)

    async def _engine_chunks(self, texts: list[str], speed: float) -> AsyncIterator[SpeechPiece]:
        """Run the blocking engine in a worker thread, one chunk per hop. Each chunk comes back
        resampled to the output rate in one piece (an engine chunk is a sentence with silence at
        its edges), so every frame cut from it carries exactly the audio its alignment names."""
        engine = self.server.engine
        rate = self.fmt.sample_rate

        def next_chunk(chunks: Iterator[SpeechPiece]) -> SpeechPiece | None:
            chunk = next(chunks, None)
            return None if chunk is None else resample_piece(chunk, rate)

        for text in texts:
            chunks = iter(engine.synthesize(text, speed=speed))  # generators start lazily
            while True:
                chunk = await anyio.to_thread.run_sync(
                    next_chunk, chunks, limiter=self.server.limiter
                )
                if chunk is None:
                    break
                yield chunk

    async def _send_audio(
        self, context_id: str | None, audio: bytes, alignment: Alignment | None
    ) -> None:
        if not audio:
            return
        self.protocol.send_audio(context_id, audio, alignment, alignment)
        self.server.stats.audio_frames_out += 1
        await self._send_pending()

    async def _send_pending(self) -> None:
        """Write every frame the protocol has queued, in order, under one lock."""
        async with self.send_lock:
            for item in self.protocol.data_to_send():
                if isinstance(item, Close):
                    with anyio.CancelScope(shield=True):
                        await self.ws.close(item.code, item.reason)
                    return
                if '"error"' in item[:40]:
                    self.server.stats.errors_sent += 1
                try:
                    await self.ws.send(item)
                except ConnectionClosed:
                    return

    async def _timer(self) -> None:
        """Fire the protocol's inactivity deadlines."""
        while True:
            deadline = self.protocol.next_deadline()
            self.timer_deadline = deadline
            self.wake_timer = anyio.Event()
            if deadline is None:
                await self.wake_timer.wait()
                continue
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await self.wake_timer.wait()
                continue
            await self._handle(list(self.protocol.tick(time.monotonic())))


class LocalTTSServer:
    """The ElevenLabs-compatible server on a real socket.

    ``async with LocalTTSServer(engine) as server:`` binds (127.0.0.1, an ephemeral port by
    default) and serves until the block ends; ``server.url`` is the base URL to give a client.
    """

    def __init__(
        self,
        engine: SpeechEngine,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        strict_voices: bool = False,
        api_key: str | None = None,
        max_concurrent_synthesis: int = 4,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.strict_voices = strict_voices
        self._api_key = Secret(api_key) if api_key else None
        if api_key:
            register_secret(api_key)
        self.limiter = anyio.CapacityLimiter(max_concurrent_synthesis)
        self.stats = ServerStats()
        self._server: Server | None = None
        self._live: set[_Connection] = set()
        self._model_noted = False

    def __repr__(self) -> str:
        return f"LocalTTSServer(url={self.url!r}, strict_voices={self.strict_voices})"

    @property
    def active_contexts(self) -> int:
        """Contexts counted (toward each connection's limit of 5) on every live connection."""
        return sum(conn.protocol.active_contexts for conn in list(self._live))

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``ws://127.0.0.1:8765``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def accepts_key(self, key: Secret) -> bool:
        """Whether a key given in a first message is acceptable (any, unless one is required)."""
        return self._api_key is None or key == self._api_key

    def _reject(self, connection: ServerConnection, status: int, text: str) -> Response:
        log.warning("refused %s: %s", status, text)
        return connection.respond(status, text + "\n")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Check the handshake: path, query, voice and (when required) the key header."""
        split = urlsplit(request.path)
        try:
            params = StreamParams.from_path_and_query(split.path, dict(parse_qsl(split.query)))
        except ProtocolError as err:
            return self._reject(connection, 404 if "path" in err.message else 400, err.message)
        header = request.headers.get("xi-api-key")
        if self._api_key is not None and header is not None and Secret(header) != self._api_key:
            return self._reject(connection, 401, "Invalid API key (xi-api-key header).")
        if params.model_id is not None and not self._model_noted:
            self._model_noted = True
            log.debug(
                "model_id %r accepted: this server speaks every model_id with its one engine "
                "(noted once)",
                params.model_id[:60],
            )
        voices = self.engine.voices()
        if params.voice_id not in voices and params.voice_id != DEFAULT_VOICE_ID:
            if self.strict_voices:
                return self._reject(
                    connection,
                    404,
                    f"Unknown voice {params.voice_id!r}. This server has: {', '.join(voices)}.",
                )
            log.warning(
                "unknown voice %r: speaking with the default voice %r (start with --strict-voices "
                "to refuse instead)",
                params.voice_id,
                voices[0],
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        params = StreamParams.from_path_and_query(split.path, dict(parse_qsl(split.query)))
        header = ws.request.headers.get("xi-api-key")
        self.stats.connections += 1
        self.stats.active_connections += 1
        try:
            try:
                fmt = parse_output_format(params.output_format)
            except ValueError as err:
                refusal = ProtocolError(str(err), code=1008, error="invalid_output_format")
                await ws.send(json.dumps(refusal.to_frame()))
                await ws.close(1008, "invalid output_format")
                return
            conn = _Connection(self, ws, params, fmt, Secret(header) if header else None)
            log.debug("connection from %s: %s", conn.peer, split.path)
            self._live.add(conn)
            try:
                await conn.run()
            finally:
                self._live.discard(conn)
        except Exception:
            log.exception("connection failed")
            with anyio.CancelScope(shield=True):
                await ws.close(1011, "internal server error")
        finally:
            self.stats.active_connections -= 1

    async def __aenter__(self) -> LocalTTSServer:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=SOCKET_MAX_FRAME,
            compression=None,
            logger=redacting_logger("voxloop.tts_server.socket"),
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info("ElevenLabs-compatible TTS server on %s", self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            with anyio.CancelScope(shield=True):
                self._server.close()
                with anyio.move_on_after(3):
                    await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        """Serve until cancelled. Cancelling closes every connection (1001)."""
        async with self:
            await anyio.sleep(math.inf)


@asynccontextmanager
async def running_server(
    engine: SpeechEngine | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    strict_voices: bool = False,
    progress: Callable[[str], None] | None = None,
) -> AsyncIterator[LocalTTSServer]:
    """Load the default local engine when none is given, then serve on loopback.

    Cancelling while loading abandons the load; leaving the block closes the server.
    """
    if engine is None:
        engine = await load_default_engine(progress)
    async with LocalTTSServer(engine, host=host, port=port, strict_voices=strict_voices) as srv:
        yield srv


async def load_default_engine(progress: Callable[[str], None] | None = None) -> SpeechEngine:
    """Load piper with the bundled voice in a worker thread (seconds, once per process)."""
    try:
        from plugins.local.piper_tts import PiperEngine
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "The local TTS engine is not installed: run ./dev.sh setup "
            "(or pip install 'voxloop[local]')."
        ) from err
    engine: SpeechEngine = await anyio.to_thread.run_sync(
        lambda: PiperEngine.load(progress=progress)
    )
    return engine


__all__ = [
    "EngineChunk",
    "LocalTTSServer",
    "ServerStats",
    "SpeechEngine",
    "SpeechPiece",
    "alignment_for",
    "load_default_engine",
    "running_server",
    "split_chunk",
]
