"""An async client for the ElevenLabs text-to-speech WebSocket (anyio + websockets).

One :class:`ElevenLabsTTS` per session. In multi-context mode (the default) it keeps one warm
socket and opens one context per turn; in single-context mode each context gets its own
``stream-input`` socket. The protocol itself is :class:`plugins.elevenlabs.protocol.ClientProtocol`;
this module moves its frames, routes audio to contexts, keeps them alive and reconnects.

The API key travels only in the ``xi-api-key`` header: never in a URL, a log line or a repr.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from types import TracebackType
from typing import Literal
from urllib.parse import urlencode, urlsplit

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent import errors
from agent.interfaces import SpeechChunk, WordTiming
from agent.redact import register_secret
from plugins.elevenlabs.alignment import AlignmentTracker
from plugins.elevenlabs.formats import Decoder, OutputFormat, parse_output_format
from plugins.elevenlabs.protocol import (
    MAX_CONTEXTS,
    AudioReceived,
    AudioTimedOut,
    ClientProtocol,
    ContextFinal,
    GenerationConfig,
    IgnoredFrame,
    PronunciationDictionaryLocator,
    ProtocolError,
    ProtocolViolation,
    Secret,
    ServerError,
    StaleAudio,
    StreamParams,
    VoiceSettings,
    classify_close,
)
from plugins.elevenlabs.redaction import remember_key, secret_safe_logger
from plugins.elevenlabs.server_frames import MAX_SERVER_FRAME_BYTES
from plugins.elevenlabs.settings import CONNECTION_ID_HEADER, DEFAULT_VOICE_ID

log = logging.getLogger("voxloop.tts")

#: Decoded chunks queued per context before the socket reader waits for the consumer.
CHUNK_QUEUE = 64

DEFAULT_BASE_URL = "wss://api.elevenlabs.io"
DEFAULT_MODEL_ID = "eleven_flash_v2_5"

FrameListener = Callable[[Literal["out", "in"], float, str], None]


class TTSError(errors.TTSError):
    """Base of the client's errors. Texts never contain the key."""


class AuthenticationError(TTSError):
    """The service refused the key (HTTP 401/403 at the handshake). Retrying cannot help."""


class ConnectionLostError(TTSError):
    """The socket dropped (no close frame, or an abnormal code) while a context was live."""


class ServerClosedError(TTSError):
    """The server closed the socket with a policy code; ``cause`` is the classified reason."""

    def __init__(self, message: str, cause: ProtocolError) -> None:
        super().__init__(message)
        self.cause = cause


class TTSTimeoutError(TTSError):
    """The server stopped sending audio for a context it had been asked to finish."""


class ContextError(TTSError):
    """The server sent an error frame for this context."""


@dataclass
class TTSConfig:
    """What to ask of the service. The defaults suit a conversational agent."""

    voice_id: str = DEFAULT_VOICE_ID
    model_id: str | None = DEFAULT_MODEL_ID
    output_format: str = "pcm_16000"
    multi: bool = True
    voice_settings: VoiceSettings | None = None
    generation_config: GenerationConfig | None = None
    pronunciation_dictionary_locators: Sequence[PronunciationDictionaryLocator] = ()
    inactivity_timeout: float = 20.0
    keepalive_interval: float = 10.0
    sync_alignment: bool = False
    auto_mode: bool = False
    connect_timeout: float = 10.0
    max_reconnects: int = 5
    backoff_initial: float = 0.25
    backoff_cap: float = 4.0
    decode_audio: bool = True
    extra_query: dict[str, str] = field(default_factory=dict)
    #: After the flush (or close), the longest silence from the server before the context
    #: fails with TTSTimeoutError: a server that stays connected but stops sending.
    audio_timeout: float = 10.0
    #: How long open_context waits for one of the 5 context slots (closed contexts count
    #: until their final arrives, so rapid barge-ins may briefly fill them all).
    context_slot_timeout: float = 5.0


def resolve_base_url(base_url: str | None) -> str:
    """The address to use: the argument, else $ELEVENLABS_BASE_URL, else the real service."""
    url = base_url or os.environ.get("ELEVENLABS_BASE_URL") or DEFAULT_BASE_URL
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        url = ("ws" if scheme == "http" else "wss") + url[len(scheme) :]
    elif scheme not in ("ws", "wss"):
        raise ValueError(
            f"TTS URL must start with ws://, wss://, http:// or https:// (got {url!r})"
        )
    return url.rstrip("/")


class TTSContext:
    """One utterance stream on the socket: text in, speech chunks out.

    ``context_id`` is the id on the wire and ``connection_id`` the server's name for the
    socket that carries it (the local server's ``stats.context(context_id, connection_id)``
    finds its server-side timings; None from a server that does not name its sockets, such as
    the real service); ``ttfb`` is the time from the first text sent to the first audio
    received.
    """

    def __init__(self, owner: _Socket, context_id: str | None, fmt: OutputFormat) -> None:
        self._owner = owner
        self.id = context_id
        self.connection_id: int | None = owner.connection_id
        self._fmt = fmt
        self._decoder = Decoder(self._fmt) if owner.config.decode_audio else None
        self._tracker = AlignmentTracker()
        # Bounded: when the consumer is slower than the server, the socket reader waits here
        # (backpressure to the server over TCP) instead of dropping audio.
        send, receive = anyio.create_memory_object_stream[SpeechChunk](CHUNK_QUEUE)
        self._send: MemoryObjectSendStream[SpeechChunk] = send
        self._receive: MemoryObjectReceiveStream[SpeechChunk] = receive
        self._error: BaseException | None = None
        self.closed_at: float | None = None
        self.first_text_at: float | None = None
        self.first_audio_at: float | None = None
        self.flush_at: float | None = None
        self.final_at: float | None = None
        self.closed = False
        self.done = False
        self.audio_seconds = 0.0

    def __repr__(self) -> str:
        return f"TTSContext(id={self.id!r}, closed={self.closed}, done={self.done})"

    @property
    def context_id(self) -> str:
        """The context's id on the wire ("" on a single-context socket, which has none)."""
        return self.id or ""

    @property
    def ttfb(self) -> float | None:
        """Seconds from the first text sent to the first audio received, once known."""
        if self.first_text_at is None or self.first_audio_at is None:
            return None
        return self.first_audio_at - self.first_text_at

    async def send(self, text: str, *, flush: bool = False, try_trigger: bool = False) -> None:
        """Send text (ideally ending with a space). Cancelling may leave the frame unsent."""
        now = time.monotonic()
        if self.first_text_at is None:
            self.first_text_at = now
        self._owner.protocol.send_text(
            self.id, text, now, flush=flush, try_trigger_generation=try_trigger
        )
        if flush:
            self.flush_at = now
        await self._owner.send_pending()

    async def flush(self, text: str = "") -> None:
        """Ask the server to speak everything buffered now; the context stays open."""
        now = time.monotonic()
        if text and self.first_text_at is None:
            self.first_text_at = now
        self._owner.protocol.flush(self.id, now, text)
        self.flush_at = now
        await self._owner.send_pending()

    async def close(self) -> None:
        """No more text: the server speaks what it holds, then sends the final message."""
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        self.closed_at = now
        if self._owner.config.multi:
            assert self.id is not None
            self._owner.protocol.close_context(self.id, now)
        else:
            self._owner.protocol.end_of_input(now)
        await self._owner.send_pending()

    async def abort(self) -> None:
        """Barge-in: close the context and drop any audio still on its way.

        Runs shielded with a short deadline, so it completes even inside a cancelled scope.
        """
        with anyio.move_on_after(0.5, shield=True):
            self.done = True
            if not self.closed:
                try:
                    await self.close()
                except (TTSError, ConnectionClosed, ValueError):
                    pass
            self._send.close()
            self._receive.close()  # a reader waiting to queue this context's audio moves on

    async def chunks(self) -> AsyncIterator[SpeechChunk]:
        """Yield decoded speech with absolute alignment until the final message.

        Raises the connection's error if the socket is lost first, and TTSTimeoutError if the
        server goes silent for `audio_timeout` after the flush or close (the protocol's timer,
        no polling). Cancelling stops reading; the context stays open (call :meth:`abort` to
        stop it).
        """
        async for item in self._receive:
            yield item
        if self._error is not None:
            raise self._error

    def words(self) -> list[WordTiming]:
        """Word timings so far (absolute, seconds from this context's first audio)."""
        return self._tracker.words()

    def heard_text(self, played_seconds: float) -> str:
        """The words fully played within ``played_seconds`` of this context's audio."""
        return self._tracker.heard_text(played_seconds)

    # -- routed from the socket's reader --
    async def _deliver_audio(self, event: AudioReceived) -> None:
        """Decode and queue one frame; waits while the consumer's queue is full."""
        if self.done:
            return
        if self._fmt.codec == "pcm" and len(event.audio) % 2:
            # half a sample: the frame is corrupt, and carrying its odd byte into the next frame
            # would shift every later sample by one byte (loud noise). Drop it whole.
            log.warning(
                "context %s: TTS server sent %d bytes of PCM16, not whole samples: frame dropped",
                self.id,
                len(event.audio),
            )
            return
        try:
            pcm = self._decode(event.audio)
        except Exception as err:  # a codec error must not take the socket's reader down
            log.warning(
                "context %s: TTS audio does not decode as %s (%s): frame dropped",
                self.id,
                self._fmt.codec,
                type(err).__name__,
            )
            self._decoder = Decoder(self._fmt)  # a codec that failed is left in a bad state
            return
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        rate = self._fmt.sample_rate
        passthrough = self._decoder is None and self._fmt.codec in ("ulaw", "alaw")
        if self._decoder is not None:
            seconds = len(pcm) / 2 / rate
        else:  # undecoded: G.711 is one byte a sample; mp3 has no length without decoding
            seconds = len(pcm) / rate if passthrough else 0.0
        chars = self._tracker.feed(event.alignment, seconds)
        self.audio_seconds += seconds
        chunk = SpeechChunk(
            pcm=pcm,
            sample_rate=rate,
            chars=[c for c, _, _ in chars],
            char_starts=[s for _, s, _ in chars],
            char_ends=[e for _, _, e in chars],
            encoding=self._fmt.codec if passthrough else "pcm",
        )
        await self._put(chunk)
        self._owner.protocol.delivered(self.id, time.monotonic())

    def _decode(self, audio: bytes) -> bytes:
        return self._decoder.decode(audio) if self._decoder is not None else audio

    async def _finish(self, error: BaseException | None = None) -> None:
        """The final message (or ``error``): queue the decoder's tail, then end the stream."""
        if self.done:
            return
        if error is None and self._decoder is not None:
            tail = self._decoder.finish()
            if tail:
                await self._put(SpeechChunk(pcm=tail, sample_rate=self._fmt.sample_rate))
        self._fail_or_end(error)

    @property
    def _backlogged(self) -> bool:
        """The consumer is behind: its queue is full (the reader waits on it)."""
        return self._send.statistics().current_buffer_used >= CHUNK_QUEUE

    def _fail_or_end(self, error: BaseException | None) -> None:
        """End the stream now; the consumer drains what is queued, then sees ``error``."""
        if self.done:
            return
        self.final_at = time.monotonic()
        self._error = error
        self.done = True
        self._send.close()

    async def _put(self, chunk: SpeechChunk) -> None:
        try:
            await self._send.send(chunk)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the consumer is gone (aborted): nothing to deliver to


def _connection_id(ws: ClientConnection) -> int | None:
    """The server's name for this socket (`CONNECTION_ID_HEADER`; only the local server sends
    it), or None."""
    value = ws.response.headers.get(CONNECTION_ID_HEADER) if ws.response is not None else None
    ok = value is not None and value.isascii() and value.isdigit() and len(value) <= 18
    return int(value) if ok and value is not None else None


class _Socket:
    """One WebSocket with its protocol, reader and keep-alive tasks."""

    def __init__(self, tts: ElevenLabsTTS, ws: ClientConnection) -> None:
        self.tts = tts
        self.config = config = tts.config
        self.ws = ws
        self.protocol = ClientProtocol(
            multi=config.multi,
            keepalive_interval=min(config.keepalive_interval, config.inactivity_timeout / 2),
            audio_timeout=config.audio_timeout,
            now=time.monotonic(),  # the idle socket's keep-alive counts from the handshake
        )
        self.contexts: dict[str | None, TTSContext] = {}
        self.slot_freed = anyio.Event()
        self.lock = anyio.Lock()
        self.error: BaseException | None = None
        self.alive = True
        self.wake_timer = anyio.Event()
        self.timer_deadline: float | None = None
        self.connection_id = _connection_id(ws)

    async def send_pending(self) -> None:
        """Write every queued frame in order. Raises ConnectionLostError if the socket is gone."""
        if self.error is not None:
            raise self.error
        # The per-token hot path: take the lock without a scheduling point when it is free
        # (an awaited acquire yields to the event loop, which would let the reader's audio
        # work run in the middle of sending a word).
        try:
            self.lock.acquire_nowait()
        except anyio.WouldBlock:
            await self.lock.acquire()
        try:
            for frame in self.protocol.data_to_send():
                try:
                    await self.ws.send(frame)
                except ConnectionClosed as err:
                    raise self._lost(err) from None
                self.last_out = time.monotonic()
                listener = self.tts.frame_listener
                if listener is not None:
                    listener("out", self.last_out, frame)  # the time it was written
        finally:
            self.lock.release()
        self._rearm_timer()

    def _rearm_timer(self) -> None:
        """Wake the timer task when the protocol's next deadline moved earlier (a flush or a
        close starts an audio timer; sending only pushes keep-alive deadlines later)."""
        deadline = self.protocol.next_deadline()
        if deadline is not None and (self.timer_deadline is None or deadline < self.timer_deadline):
            self.wake_timer.set()

    def _lost(self, err: ConnectionClosed) -> TTSError:
        rcvd = err.rcvd
        if rcvd is not None and rcvd.code == 1008:
            cause = classify_close(rcvd.code, rcvd.reason)
            return ServerClosedError(f"TTS server closed the socket: {cause.message}", cause)
        if rcvd is not None and rcvd.code == 1000:
            return ConnectionLostError("TTS server closed the socket (1000)")
        if err.sent is not None and err.sent.code == 1009:
            return ConnectionLostError(
                f"TTS server sent a frame over {MAX_SERVER_FRAME_BYTES // (1024 * 1024)} MiB; "
                "the socket was closed (1009) and a new one opens on the next context"
            )
        code = rcvd.code if rcvd is not None else 1006
        return ConnectionLostError(
            f"TTS socket dropped (code {code}); a new socket opens on the next context"
        )

    async def reader(self) -> None:
        """Route server frames to contexts until the socket closes. Cancelling stops reading."""
        try:
            async for data in self.ws:
                now = time.monotonic()
                listener = self.tts.frame_listener
                if listener is not None:
                    listener("in", now, data if isinstance(data, str) else "<binary>")
                for event in self.protocol.receive(data, now):
                    await self._route(event)
            self._close_all(None)
        except ConnectionClosed as err:
            self._close_all(self._lost(err))
        # Cancelled (the session is shutting down): the socket itself is still open, so the
        # shutdown can still say close_socket on it; `alive` only goes False when it closed.

    async def _route(self, event: object) -> None:
        if isinstance(event, AudioReceived):
            ctx = self.contexts.get(event.context_id)
            if ctx is not None:
                await ctx._deliver_audio(event)
        elif isinstance(event, ContextFinal):
            ctx = self.contexts.pop(event.context_id, None)
            self._slot_freed()
            if ctx is not None:
                await ctx._finish()
        elif isinstance(event, ServerError):
            log.warning("TTS server error: %s: %s", event.error, event.message)
            err = ContextError(f"TTS server error {event.error}: {event.message}")
            # an error naming a context fails that context only (a late error about an aborted
            # context must not end the current turn); one naming none fails them all
            if event.context_id is None:
                failed = list(self.contexts.values())
            else:
                named = self.contexts.get(event.context_id)
                failed = [named] if named is not None else []
            for ctx in failed:
                ctx._fail_or_end(err)
        elif isinstance(event, ProtocolViolation):
            log.warning("TTS server sent a bad frame (ignored): %s", event.reason)
        elif isinstance(event, IgnoredFrame | StaleAudio):
            log.debug("ignored frame: %s", event)

    def _close_all(self, error: BaseException | None) -> None:
        self.alive = False
        self.wake_timer.set()  # the timer task sees the socket is gone and ends
        if error is not None:
            self.error = error
        for ctx in list(self.contexts.values()):
            ctx._fail_or_end(error or ConnectionLostError("TTS socket closed before the final"))
        self.contexts.clear()
        self._slot_freed()

    def _slot_freed(self) -> None:
        """Wake open_context calls waiting for one of the 5 context slots."""
        self.slot_freed.set()
        self.slot_freed = anyio.Event()

    async def timers(self) -> None:
        """Run the protocol's timers (keep-alives, audio timeouts) until the socket closes.
        Cancelling stops them."""
        while self.alive:
            deadline = self.protocol.next_deadline()
            self.timer_deadline = deadline
            self.wake_timer = anyio.Event()
            if deadline is None:
                await self.wake_timer.wait()
                continue
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await self.wake_timer.wait()
                continue
            if not self.alive:
                return
            now = time.monotonic()
            for event in self.protocol.tick(now):
                if isinstance(event, AudioTimedOut):
                    self._timed_out(event, now)
            try:
                await self.send_pending()
            except TTSError:
                return

    def _timed_out(self, event: AudioTimedOut, now: float) -> None:
        ctx = self.contexts.get(event.context_id)
        if ctx is None:
            return
        if ctx._backlogged:  # our consumer is behind, not the server: wait on
            self.protocol.delivered(event.context_id, now)
            return
        ctx._fail_or_end(
            TTSTimeoutError(
                f"TTS context {ctx.id}: no audio and no final message for "
                f"{event.seconds:.0f} s after it was flushed; the server may be stuck"
            )
        )


class ElevenLabsTTS:
    """A text-to-speech session over the ElevenLabs WebSocket protocol.

    ``async with ElevenLabsTTS(config, api_key=..., base_url=...) as tts:`` connects (multi-context
    mode) and keeps the socket warm; ``ctx = await tts.open_context()`` starts an utterance.
    Leaving the block sends ``close_socket`` and closes the socket.
    """

    def __init__(
        self,
        config: TTSConfig | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        frame_listener: FrameListener | None = None,
    ) -> None:
        self.config = config or TTSConfig()
        try:
            #: the configured output_format, parsed once
            self.format: OutputFormat = parse_output_format(self.config.output_format)
        except ValueError as err:  # before any connection: the message lists what is supported
            raise TTSError(str(err)) from None
        key = api_key if api_key is not None else os.environ.get("ELEVENLABS_API_KEY")
        self._key = Secret(key) if key else None
        if key:
            register_secret(key)
            remember_key(key)
        self.base_url = resolve_base_url(base_url)
        self.frame_listener = frame_listener
        self._ids = count(1)
        self._socket: _Socket | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.reconnects = 0

    def __repr__(self) -> str:
        key = "set" if self._key else "none"
        return (
            f"ElevenLabsTTS(base_url={self.base_url!r}, voice={self.config.voice_id!r}, key={key})"
        )

    def url(self) -> str:
        """The socket URL for the configured voice (never holds a key)."""
        params = StreamParams(
            voice_id=self.config.voice_id,
            multi=self.config.multi,
            model_id=self.config.model_id,
            output_format=self.format,
            inactivity_timeout=self.config.inactivity_timeout,
            sync_alignment=self.config.sync_alignment,
            auto_mode=self.config.auto_mode,
        )
        path, query = params.to_path_and_query()
        query.update(self.config.extra_query)
        return f"{self.base_url}{path}?{urlencode(query)}"

    async def __aenter__(self) -> ElevenLabsTTS:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            if self.config.multi:
                await self._ensure_socket()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        # A normal exit lets the server finish what was flushed (up to ~2 s, as real clients
        # wait); on cancellation or an error, close_socket is still said but not waited for.
        graceful = exc_type is None
        with anyio.move_on_after(2.5 if graceful else 0.5, shield=True):
            sock = self._socket
            if sock is not None and sock.alive and self.config.multi:
                try:
                    sock.protocol.close_socket(time.monotonic())
                    await sock.send_pending()
                    if graceful:
                        with anyio.move_on_after(2.0):
                            await sock.ws.wait_closed()
                except TTSError:
                    pass
            if sock is not None:
                await sock.ws.close()
        self._tg.cancel_scope.cancel()
        return await self._tg.__aexit__(exc_type, exc, tb)

    async def _connect(self) -> ClientConnection:
        headers = {"xi-api-key": self._key.reveal()} if self._key else {}
        url = self.url()
        delay = self.config.backoff_initial
        attempt = 0
        while True:
            try:
                with anyio.fail_after(self.config.connect_timeout):
                    return await connect(
                        url,
                        additional_headers=headers,
                        max_size=MAX_SERVER_FRAME_BYTES,
                        compression=None,
                        open_timeout=None,
                        ping_interval=20,
                        close_timeout=1.0,
                        logger=secret_safe_logger("voxloop.tts.socket"),
                    )
            except InvalidStatus as err:
                status = err.response.status_code
                if status in (401, 403):
                    raise AuthenticationError(
                        f"TTS service refused the API key (HTTP {status}): check "
                        "ELEVENLABS_API_KEY. Not retrying."
                    ) from None
                if status < 500:
                    body = err.response.body.decode("utf-8", "replace")[:300].strip()
                    raise TTSError(f"TTS handshake refused (HTTP {status}): {body}") from None
                failure: str = f"HTTP {status}"
            except InvalidURI:
                raise TTSError(f"bad TTS URL {self.base_url!r}") from None
            except InvalidHandshake as err:  # e.g. the connection dropped before a response
                failure = f"handshake failed: {err}"
            except (OSError, TimeoutError) as err:
                detail = err.strerror if isinstance(err, OSError) else None
                failure = type(err).__name__ + (f": {detail}" if detail else "")
            attempt += 1
            if attempt > self.config.max_reconnects:
                raise ConnectionLostError(
                    f"cannot reach the TTS server at {self.base_url} ({failure}) after "
                    f"{attempt} attempts: is it running? (start one with `voxloop tts-server`)"
                )
            log.warning("TTS connect failed (%s); retrying in %.2f s", failure, delay)
            await anyio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(self.config.backoff_cap, delay * 2)

    async def _ensure_socket(self) -> _Socket:
        sock = self._socket
        if sock is not None and sock.alive and self.config.multi:
            return sock
        if sock is not None and not sock.alive:
            self.reconnects += 1
            log.info("TTS socket was lost (%s); opening a new one", sock.error or "closed")
        assert self._tg is not None, "use `async with ElevenLabsTTS(...)`"
        ws = await self._connect()
        sock = _Socket(self, ws)
        self._socket = sock
        self._tg.start_soon(sock.reader)
        self._tg.start_soon(sock.timers)
        return sock

    async def _wait_for_slot(self, sock: _Socket) -> None:
        """Wait (bounded) until fewer than 5 contexts count on the socket. A closed context
        counts until its final arrives, so rapid barge-ins can fill the slots for a moment."""
        with anyio.move_on_after(self.config.context_slot_timeout):
            while sock.alive and sock.protocol.counted_contexts >= MAX_CONTEXTS:
                await sock.slot_freed.wait()
        # still full: protocol.open_context raises TooManyContextsError, naming the limit

    async def open_context(self, context_id: str | None = None) -> TTSContext:
        """Open a new context (a new socket in single-context mode) and send its init.

        Cancelling may leave the context unopened; nothing else changes.
        """
        if not self.config.multi and self._socket is not None:
            await self._socket.ws.close()
            self._socket = None
        sock = await self._ensure_socket()
        if self.config.multi:
            context_id = context_id or f"ctx-{next(self._ids)}"
        else:
            context_id = None
        if self.config.multi:
            await self._wait_for_slot(sock)
        ctx = TTSContext(sock, context_id, self.format)
        sock.contexts[context_id] = ctx
        sock.protocol.open_context(
            context_id,
            time.monotonic(),
            voice_settings=self.config.voice_settings,
            generation_config=self.config.generation_config,
            pronunciation_dictionary_locators=self.config.pronunciation_dictionary_locators,
        )
        await sock.send_pending()
        return ctx


async def synthesize(
    tts: ElevenLabsTTS, words: Sequence[str], *, flush: bool = True
) -> AsyncIterator[SpeechChunk]:
    """Convenience: one context, the given pieces sent in order, then flush and close."""
    ctx = await tts.open_context()
    for piece in words:
        await ctx.send(piece)
    if flush:
        await ctx.flush()
    await ctx.close()
    async for chunk in ctx.chunks():
        yield chunk


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL_ID",
    "DEFAULT_VOICE_ID",
    "AuthenticationError",
    "ConnectionLostError",
    "ContextError",
    "ElevenLabsTTS",
    "ServerClosedError",
    "TTSConfig",
    "TTSContext",
    "TTSError",
    "resolve_base_url",
    "synthesize",
]
