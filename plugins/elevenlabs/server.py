"""A local server that speaks the ElevenLabs text-to-speech WebSocket protocol.

Any ElevenLabs client, ours or anyone's, can point its base URL at it (``ws://127.0.0.1:8765``)
and talk ``/v1/text-to-speech/{voice_id}/stream-input`` or ``.../multi-stream-input``. All protocol
rules live in :mod:`plugins.elevenlabs.protocol` (sans-I/O); this module only moves frames between
the socket, that state machine and a speech engine, and runs synthesis off the event loop.

Per connection, three kinds of task share one task group:

- the reader feeds client frames to the protocol and routes its events. It never waits for
  synthesis (the protocol bounds the text a connection may hold), so it sees a hang-up at once,
  and it goes on reading after a close frame is sent so the TCP close is prompt;
- one synthesis worker per context turns queued pieces into audio frames, in order, asking the
  protocol before each piece and after each engine chunk whether it is still wanted (a closed
  context speaks only its flushed text; a connection that is gone wants nothing);
- a timer fires the protocol's inactivity deadlines.

Exposure: at most `max_connections` sockets (and `max_connections_per_address` per client
address) are served; more are refused with HTTP 503. With `api_key` set, every client must
present it (the `xi-api-key` header, the query, or its first message); binding beyond
loopback without a key is refused unless `allow_public_without_key`. Keys sent by clients never
reach a log line (:mod:`plugins.elevenlabs.redaction`).

Cancelling :meth:`LocalTTSServer.serve_forever` (or leaving its ``async with``) stops accepting,
closes every connection with 1001 and waits for their tasks.

Model ids: the server has one engine, so it accepts any ``model_id`` a client asks for and speaks
with that engine; the first one requested is noted once in a DEBUG log line.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from agent.redact import register_secret

from .client_messages import dumps
from .engine import (
    EngineChunk,
    SpeechEngine,
    SpeechPiece,
    alignment_for,
    resample_piece,
    split_chunk,
    split_for_first_audio,
)
from .formats import Encoder
from .protocol import (
    MAX_PENDING_CHARS,
    MAX_PIECE_CHARS,
    Alignment,
    Close,
    ContextEnded,
    ContextStarted,
    ProtocolError,
    Secret,
    ServerProtocol,
    SocketEnding,
    StreamParams,
    Synthesize,
    api_key_from_query,
)
from .redaction import remember_key, secret_safe_logger
from .settings import CONNECTION_ID_HEADER, DEFAULT_VOICE_ID

log = secret_safe_logger("voxloop.tts_server")

#: Largest frame the socket layer accepts. Frames above the protocol's own limit but below this
#: get an error frame and the connection lives on; above this the socket closes with 1009.
SOCKET_MAX_FRAME = 4 * 1024 * 1024
#: Longest audio carried by one frame, so frames stay far below clients' 1 MiB default limit.
MAX_FRAME_SECONDS = 1.0
#: How many recent contexts' timings `ServerStats` keeps.
STATS_WINDOW = 1000
#: A context's first frame is short, so its bytes leave after encoding only this much.
FIRST_FRAME_SECONDS = 0.2
#: Default caps on sockets served at once, in all and per client address.
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_ADDRESS = 16
#: How long the server waits for a client to answer its close frame.
CLOSE_TIMEOUT_S = 2.0
#: Environment variable the CLI reads the required key from.
API_KEY_ENV = "VOXLOOP_TTS_API_KEY"


@dataclass
class ContextTiming:
    """One context's server-side timings. The `*_at` fields are this process's monotonic clock;
    the `*_s` fields are durations, comparable across machines and clocks.

    - `text_to_synthesis_s`: from the context's first text received to its synthesis start
      (time spent waiting for the chunk schedule, a flush, or a free engine);
    - `engine_first_chunk_s`: from synthesis start to the engine's first chunk;
    - `first_frame_s`: from synthesis start to the first audio frame written.
    """

    context_id: str | None
    connection_id: int = 0
    first_text_at: float | None = None
    first_synthesize_at: float | None = None
    engine_first_chunk_s: float | None = None
    first_frame_at: float | None = None
    text_to_synthesis_s: float | None = None
    first_frame_s: float | None = None


@dataclass
class ServerStats:
    """Counters a test or a benchmark can read. The per-context series keep the most recent
    `STATS_WINDOW` entries, so a server that runs for days does not grow."""

    connections: int = 0
    active_connections: int = 0
    refused_connections: int = 0
    frames_in: int = 0
    audio_frames_out: int = 0
    errors_sent: int = 0
    engine_first_chunk_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    first_frame_sent_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    contexts: deque[ContextTiming] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    abandoned_items: int = 0  # pieces of closed contexts (or gone clients) not synthesized
    engine_calls: int = 0  # engine chunks produced (each one a hop to a worker thread)

    def context(self, context_id: str | None, connection_id: int | None = None) -> ContextTiming:
        """The most recent timing of `context_id` (on `connection_id`, when given).

        Context ids are chosen by clients, so two connections may reuse one (every socket of
        our client starts at "ctx-1"); pass the connection to tell them apart: the server names
        it in the handshake response (`CONNECTION_ID_HEADER`), and our client's contexts carry
        it as `TTSContext.connection_id`. KeyError if the id is not among the recent contexts.
        """
        for timing in reversed(self.contexts):
            if timing.context_id == context_id and connection_id in (None, timing.connection_id):
                return timing
        raise KeyError(context_id)


class _Connection:
    """One client socket: the protocol, its workers and its sends."""

    def __init__(
        self,
        server: LocalTTSServer,
        ws: ServerConnection,
        params: StreamParams,
        handshake_key: Secret | None,
        connection_id: int,
    ) -> None:
        self.server = server
        self.ws = ws
        self.id = connection_id
        self.fmt = params.output_format
        self.protocol = ServerProtocol(
            params,
            time.monotonic(),
            header_api_key=handshake_key,
            max_pending_chars=server.max_pending_chars,
            max_piece_chars=server.max_piece_chars,
            first_clause=server.first_clause,
        )
        self.must_authenticate = server.requires_key and handshake_key is None
        self.send_lock = anyio.Lock()
        # one engine hop at a time per connection: a heavy client cannot take every engine slot
        self.engine_slot = anyio.CapacityLimiter(1)
        self.queues: dict[str | None, MemoryObjectSendStream[Synthesize | ContextEnded]] = {}
        self.wake_timer = anyio.Event()
        self.timer_deadline: float | None = None  # what the timer sleeps toward (None: nothing)
        self.closing = False
        self.peer = f"{ws.remote_address[0]}:{ws.remote_address[1]}" if ws.remote_address else "?"

    async def run(self) -> None:
        """Serve the connection until it closes. Cancelling closes the socket with 1001."""
        async with anyio.create_task_group() as tg:
            self.tg = tg
            tg.start_soon(self._timer)
            try:
                await self._read_loop()
            finally:
                self.protocol.connection_lost(time.monotonic())
                for queue in self.queues.values():
                    queue.close()
                tg.cancel_scope.cancel()

    async def _read_loop(self) -> None:
        """Read until the socket is closed, also after the protocol decided to close (so the
        client's close frame is read at once and the TCP close does not wait)."""
        while True:
            try:
                data = await self.ws.recv()
            except ConnectionClosed:
                return
            if self.protocol.closed or self.closing:
                continue  # draining toward the close handshake
            self.server.stats.frames_in += 1
            events = self.protocol.receive(data, time.monotonic())
            await self._handle(events)
            self._rearm_timer()

    def _rearm_timer(self) -> None:
        """Wake the timer if the protocol's next deadline is sooner than the one it sleeps
        toward. Activity only pushes inactivity deadlines later, so most frames wake nothing."""
        deadline = self.protocol.next_deadline()
        if deadline is not None and (self.timer_deadline is None or deadline < self.timer_deadline):
            self.wake_timer.set()

    def _authenticate(self, events: Sequence[object]) -> bool:
        """A server that requires a key, and got none at the handshake: the first message must
        start a context carrying it. False (and a close queued) otherwise."""
        if not self.must_authenticate:
            return True
        started = [e for e in events if isinstance(e, ContextStarted)]
        key = started[0].api_key if started else None
        if key is not None and self.server.accepts_key(key):
            self.must_authenticate = False
            return True
        error = "invalid_api_key" if key is not None else "missing_api_key"
        message = (
            "Invalid API key."
            if key is not None
            else "This server requires an API key: send it in the xi-api-key header (or as "
            "xi_api_key in the first message)."
        )
        self.protocol.send_error(ProtocolError(message, code=1008, error=error))
        self.protocol.send_close(1008, message)
        return False

    async def _handle(self, events: Sequence[object]) -> None:
        if not self._authenticate(events):
            await self._send_pending()
            return
        for event in events:
            if isinstance(event, ContextStarted):
                if event.api_key is not None:
                    remember_key(event.api_key.reveal())
                    if not self.server.accepts_key(event.api_key):
                        self.protocol.send_error(
                            ProtocolError("Invalid API key.", code=1008, error="invalid_api_key")
                        )
                        self.protocol.send_close(1008, "Invalid API key.")
                        break
                self._queue_for(event.context_id)
            elif isinstance(event, Synthesize):
                self._queue_for(event.context_id).send_nowait(event)
            elif isinstance(event, ContextEnded):
                queue = self.queues.pop(event.context_id, None) or self._queue_for(
                    event.context_id, register=False
                )
                queue.send_nowait(event)
                queue.close()
            elif isinstance(event, SocketEnding):
                log.info("closing %s: %s %s", self.peer, event.code, event.reason)
        await self._send_pending()

    def _queue_for(
        self, context_id: str | None, *, register: bool = True
    ) -> MemoryObjectSendStream[Synthesize | ContextEnded]:
        """The context's work queue (its worker starts with it). Unbounded in count: the
        protocol bounds the characters a connection holds, and the reader must never wait."""
        existing = self.queues.get(context_id)
        if existing is not None:
            return existing
        send, receive = anyio.create_memory_object_stream[Synthesize | ContextEnded](math.inf)
        if register:
            self.queues[context_id] = send
        self.tg.start_soon(self._synthesis_worker, context_id, receive)
        return send

    async def _synthesis_worker(
        self,
        context_id: str | None,
        queue: MemoryObjectReceiveStream[Synthesize | ContextEnded],
    ) -> None:
        """Synthesize one context's pieces in order; then send its final message. Pieces the
        protocol no longer wants are skipped, and abandoned between engine chunks."""
        encoder = Encoder(self.fmt, self.fmt.sample_rate)  # audio arrives resampled
        first = True
        timing = ContextTiming(context_id, self.id)
        self.server.stats.contexts.append(timing)
        stats = self.server.stats
        async with queue:
            async for entry in queue:
                if isinstance(entry, ContextEnded):
                    tail = encoder.finish()
                    if tail:
                        await self._send_audio(context_id, tail, None)
                    self.protocol.send_final(context_id, time.monotonic())
                    await self._send_pending()
                    self._rearm_timer()  # the last final arms the socket's own idle timer
                    return
                item = entry
                if not self.protocol.wanted(context_id, item.seq):
                    stats.abandoned_items += 1
                    self.protocol.piece_done(context_id, item.seq)
                    continue
                speed = (item.voice_settings.speed if item.voice_settings else None) or 1.0
                started = time.monotonic()
                if first:
                    timing.first_synthesize_at = started
                    timing.first_text_at = item.first_text_at
                    if item.first_text_at is not None:
                        timing.text_to_synthesis_s = max(0.0, started - item.first_text_at)
                pieces = split_for_first_audio(item.text) if first else [item.text]
                async for chunk in self._engine_chunks(context_id, item.seq, pieces, speed):
                    if first:
                        timing.engine_first_chunk_s = time.monotonic() - started
                        stats.engine_first_chunk_s.append(timing.engine_first_chunk_s)
                    head = FIRST_FRAME_SECONDS if first else None
                    for frame in split_chunk(chunk, MAX_FRAME_SECONDS, head_seconds=head):
                        # resampling and encoding run off the event loop, like synthesis
                        audio = await anyio.to_thread.run_sync(
                            encoder.encode, frame.pcm, limiter=self.server.limiter
                        )
                        await self._send_audio(context_id, audio, alignment_for(frame))
                    if first:
                        timing.first_frame_at = time.monotonic()
                        timing.first_frame_s = timing.first_frame_at - started
                        stats.first_frame_sent_s.append(timing.first_frame_s)
                        first = False
                self.protocol.piece_done(context_id, item.seq)
                if item.flush:
                    tail = encoder.finish()
                    encoder = Encoder(self.fmt, self.fmt.sample_rate)
                    if tail:
                        await self._send_audio(context_id, tail, None)

    async def _engine_chunks(
        self, context_id: str | None, seq: int, texts: list[str], speed: float
    ) -> AsyncIterator[SpeechPiece]:
        """Run the blocking engine in a worker thread, one chunk per hop, while the protocol
        still wants piece `seq` (it is asked again after every chunk). Each chunk comes back
        resampled to the output rate in one piece, so every frame cut from it carries exactly
        the audio its alignment names. An engine failure becomes an error frame naming the
        context; the context's other pieces still play."""
        engine = self.server.engine
        rate = self.fmt.sample_rate
        stats = self.server.stats

        def next_chunk(chunks: Iterator[SpeechPiece]) -> SpeechPiece | None:
            chunk = next(chunks, None)
            return None if chunk is None else resample_piece(chunk, rate)

        for text in texts:
            chunks = iter(engine.synthesize(text, speed=speed))  # generators start lazily
            try:
                while self.protocol.wanted(context_id, seq):
                    async with self.engine_slot:
                        if not self.protocol.wanted(context_id, seq):
                            break
                        chunk = await anyio.to_thread.run_sync(
                            next_chunk, chunks, limiter=self.server.limiter
                        )
                    if chunk is None:
                        break
                    stats.engine_calls += 1
                    yield chunk
                else:
                    stats.abandoned_items += 1
                    return
            except Exception as err:  # the engine failed on this text: say so, keep serving
                log.warning("engine failed on a piece of context %r: %s", context_id, type(err))
                failure = ProtocolError(
                    f"synthesis failed ({type(err).__name__}); the rest of the context goes on",
                    code=1011,
                    error="synthesis_failed",
                )
                frame = failure.to_frame()
                if self.protocol.multi and context_id is not None:
                    frame["contextId"] = context_id
                await self._send_raw(dumps(frame))
                return
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

    async def _send_audio(
        self, context_id: str | None, audio: bytes, alignment: Alignment | None
    ) -> None:
        if not audio:
            return
        self.protocol.send_audio(context_id, audio, alignment, alignment)
        self.server.stats.audio_frames_out += 1
        await self._send_pending()

    async def _send_raw(self, frame: str) -> None:
        if self.protocol.closed:
            return
        async with self.send_lock:
            self.server.stats.errors_sent += 1
            try:
                await self.ws.send(frame)
            except ConnectionClosed:
                pass

    async def _send_pending(self) -> None:
        """Write every frame the protocol has queued, in order, under one lock. A Close starts
        the closing handshake in its own task, so the reader goes on reading meanwhile."""
        async with self.send_lock:
            for item in self.protocol.data_to_send():
                if isinstance(item, Close):
                    if not self.closing:
                        self.closing = True
                        self.tg.start_soon(self._close, item)
                    return
                if '"error"' in item[:40]:
                    self.server.stats.errors_sent += 1
                try:
                    await self.ws.send(item)
                except ConnectionClosed:
                    return

    async def _close(self, item: Close) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT_S + 1):
            await self.ws.close(item.code, item.reason)

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


def is_loopback(host: str) -> bool:
    """Whether `host` binds only the loopback interface (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalTTSServer:
    """The ElevenLabs-compatible server on a real socket.

    ``async with LocalTTSServer(engine) as server:`` binds (127.0.0.1, an ephemeral port by
    default) and serves until the block ends; ``server.url`` is the base URL to give a client.

    Raises ValueError at construction when `host` is beyond loopback and no `api_key` is given,
    unless `allow_public_without_key` (anyone who can reach the port could then use it).

    ``first_clause`` (default on): each context's first complete clause is spoken at once,
    before the chunk schedule's first value is reached (see `textbuffer`); off, the server
    follows the schedule exactly, as the ElevenLabs service does.
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
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        max_pending_chars: int = MAX_PENDING_CHARS,
        max_piece_chars: int = MAX_PIECE_CHARS,
        allow_public_without_key: bool = False,
        first_clause: bool = True,
    ) -> None:
        if not api_key and not is_loopback(host) and not allow_public_without_key:
            raise ValueError(
                f"refusing to serve on {host} without an API key: anyone who can reach it "
                f"could use it. Give one (--api-key or ${API_KEY_ENV}), bind 127.0.0.1, or "
                "pass --allow-public-without-key if you really mean it."
            )
        self.engine = engine
        self.first_clause = first_clause
        self.host = host
        self.port = port
        self.strict_voices = strict_voices
        self._api_key = Secret(api_key) if api_key else None
        if api_key:
            register_secret(api_key)
            remember_key(api_key)
        self.limiter = anyio.CapacityLimiter(max_concurrent_synthesis)
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.max_pending_chars = max_pending_chars
        #: most text (in letters, see textbuffer.char_cost) per engine call: lower it to bound
        #: the engine's memory further (piper: ~1.2 MB a letter), at some cost in prosody
        self.max_piece_chars = max_piece_chars
        self.stats = ServerStats()
        self._server: Server | None = None
        self._live: set[_Connection] = set()
        self._admitted: dict[ServerConnection, str] = {}
        self._requests: dict[
            ServerConnection, tuple[StreamParams | ProtocolError, Secret | None, int]
        ] = {}
        self._connection_ids = itertools.count(1)  # accepted handshakes, named to the client
        self._model_noted = False

    def __repr__(self) -> str:
        return (
            f"LocalTTSServer(url={self.url!r}, strict_voices={self.strict_voices}, "
            f"key={'required' if self._api_key else 'none'})"
        )

    @property
    def requires_key(self) -> bool:
        return self._api_key is not None

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
        """Whether a key a client presented is acceptable (any, unless one is required)."""
        return self._api_key is None or key == self._api_key

    def _reject(self, connection: ServerConnection, status: int, text: str) -> Response:
        log.warning("refused %s: %s", status, text)
        return connection.respond(status, text + "\n")

    def _admit(self, connection: ServerConnection) -> str | None:
        """Count the connection against the caps; the refusal text when over one."""
        for admitted in [c for c in self._admitted if c.protocol.state is State.CLOSED]:
            del self._admitted[admitted]  # handshakes that failed after admission
            self._requests.pop(admitted, None)
        address = connection.remote_address[0] if connection.remote_address else "?"
        if len(self._admitted) >= self.max_connections:
            return (
                f"Too many connections: this server serves at most {self.max_connections} at "
                "once. Close idle sockets (keep-alives hold them) or try again later."
            )
        if sum(1 for a in self._admitted.values() if a == address) >= (
            self.max_connections_per_address
        ):
            return (
                f"Too many connections from your address: at most "
                f"{self.max_connections_per_address} at once. Close idle sockets first."
            )
        self._admitted[connection] = address
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Check the handshake: limits, path, query, voice and (when presented) the key."""
        split = urlsplit(request.path)
        query = dict(parse_qsl(split.query))
        header = request.headers.get("xi-api-key")
        key = Secret(header) if header else api_key_from_query(query)
        if key is not None:
            remember_key(key.reveal())
        refusal = self._admit(connection)
        if refusal is not None:
            self.stats.refused_connections += 1
            return self._reject(connection, 503, refusal)
        try:
            params: StreamParams | ProtocolError = StreamParams.from_path_and_query(
                split.path, query
            )
        except ProtocolError as err:
            if err.error != "invalid_output_format":  # that one is an error frame, as live
                self._admitted.pop(connection, None)
                return self._reject(connection, 404 if "path" in err.message else 400, err.message)
            params = err
        if key is not None and not self.accepts_key(key):
            self._admitted.pop(connection, None)
            return self._reject(connection, 401, "Invalid API key.")
        if isinstance(params, StreamParams):
            refused = self._check_voice(connection, params)
            if refused is not None:
                self._admitted.pop(connection, None)
                return refused
        self._requests[connection] = (params, key, next(self._connection_ids))
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        """Name the accepted socket to its client (`CONNECTION_ID_HEADER`), so the client can
        find its contexts' timings in `stats` (context ids repeat across sockets)."""
        accepted = self._requests.get(connection)
        if accepted is not None and response.status_code == 101:
            response.headers[CONNECTION_ID_HEADER] = str(accepted[2])

    def _check_voice(self, connection: ServerConnection, params: StreamParams) -> Response | None:
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
                    f"Unknown voice {params.voice_id[:80]!r}. This server has: "
                    f"{', '.join(voices)}.",
                )
            log.warning(
                "unknown voice %r: speaking with the default voice %r (start with --strict-voices "
                "to refuse instead)",
                params.voice_id[:80],
                voices[0],
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        params, key, connection_id = self._requests.pop(ws)
        self.stats.connections += 1
        self.stats.active_connections += 1
        try:
            if isinstance(params, ProtocolError):
                await ws.send(dumps(params.to_frame()))
                await ws.close(1008, "invalid output_format")
                return
            conn = _Connection(self, ws, params, key, connection_id)
            log.debug("connection %d from %s", conn.id, conn.peer)
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
            self._admitted.pop(ws, None)
            self.stats.active_connections -= 1

    async def __aenter__(self) -> LocalTTSServer:
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            process_response=self._process_response,
            max_size=SOCKET_MAX_FRAME,
            compression=None,
            close_timeout=CLOSE_TIMEOUT_S,
            logger=secret_safe_logger("voxloop.tts_server.socket"),
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info(
            "ElevenLabs-compatible TTS server on %s (key %s)",
            self.url,
            "required" if self._api_key else "not required",
        )
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
    api_key: str | None = None,
    allow_public_without_key: bool = False,
    max_connections: int = MAX_CONNECTIONS,
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    first_clause: bool = True,
) -> AsyncIterator[LocalTTSServer]:
    """Load the default local engine when none is given, then serve (loopback by default).

    Raises ValueError before loading anything when `host` is beyond loopback without a key
    (see LocalTTSServer). Cancelling while loading abandons the load; leaving the block closes
    the server.
    """
    if not api_key and not is_loopback(host) and not allow_public_without_key:
        LocalTTSServer(_NoEngine(), host=host)  # raises the explanatory ValueError
    if engine is None:
        engine = await load_default_engine(progress)
    async with LocalTTSServer(
        engine,
        host=host,
        port=port,
        strict_voices=strict_voices,
        api_key=api_key,
        allow_public_without_key=allow_public_without_key,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        first_clause=first_clause,
    ) as srv:
        yield srv


class _NoEngine:
    sample_rate = 16000

    def voices(self) -> list[str]:
        return []

    def synthesize(self, text: str, *, speed: float = 1.0) -> Iterator[SpeechPiece]:
        return iter(())


async def load_default_engine(progress: Callable[[str], None] | None = None) -> SpeechEngine:
    """Load piper with the bundled voice in a worker thread (seconds, once per process).

    Cancelling abandons the wait (the load finishes in its thread)."""
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
    "API_KEY_ENV",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "ContextTiming",
    "EngineChunk",
    "LocalTTSServer",
    "ServerStats",
    "SpeechEngine",
    "SpeechPiece",
    "alignment_for",
    "is_loopback",
    "load_default_engine",
    "running_server",
    "split_chunk",
    "split_for_first_audio",
]
