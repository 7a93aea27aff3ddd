"""Sans-I/O ElevenLabs WebSocket TTS protocol: server and client roles, single and multi context.

After python-websockets' `protocol.py` and h11's `_state.py`: no sockets, no clocks, no sleeps.
Frames go in (`receive(data, now)`), events come out, frames to write come from
`data_to_send()`. Time only enters as the `now` argument (monotonic seconds); timers fire in
`tick(now)` only (never inside `receive`), and `next_deadline()` says when to call it.

Status: every rule below is implemented and covered by tests/test_protocol.py (plus
tests/test_alignment.py and tests/faults/test_idle_keepalive.py for the timers). The client role
lives in `client_protocol.py`; the wire types live by concern in `errors.py`, `settings.py`,
`client_messages.py` and `server_frames.py`. All are re-exported here, so
`from plugins.elevenlabs.protocol import X` works for every public name.

Server role (`ServerProtocol`)
- single context (`.../stream-input`): the first message starts the context (ContextStarted,
  settings + key in `xi_api_key` or `xi-api-key`); text is joined and buffered by the chunk
  schedule (`textbuffer.py` documents the join/schedule/auto_mode rules); `flush` releases
  everything; a lone `{"text": " "}` later is a keep-alive (KeepAlive); `{"text": ""}` flushes
  and ends the context (ContextEnded "close"); after `send_final(None)` the protocol queues
  Close(1000, "") and is done.
- multi context (`.../multi-stream-input`): a message naming an unknown context_id starts it
  (init, text, flush and keep-alive alike); no context_id means the default context (id None,
  replies carry no contextId); a bare `{"text": ""}` is a socket keep-alive and closes nothing;
  `{"text": "", "context_id": C}` keeps C alive; `close_context` drops C's unflushed text
  (a flush in the same or an earlier message still plays) and ends it; `close_socket` flushes
  and ends every context (SocketEnding(1000)) and Close(1000) is queued after the last final.
  A closed context keeps counting toward MAX_CONTEXTS until `send_final`; the 6th counted context
  gets an error frame `max_active_conversations` and Close(1008).
- voice_settings that change after a context's first message -> Close(1008,
  SETTINGS_CHANGED_REASON). generation_config on a later message replaces the schedule.
- inactivity: single: no message within inactivity_timeout -> Close(1008, inactivity reason);
  multi: an OPEN context idle for inactivity_timeout ends (ContextEnded "timeout", its unflushed
  text dropped, the server then sends its final); with no counted context, a socket idle for the
  timeout -> Close(1008, inactivity reason). Any valid message resets the timers it names.
- fatal closes (1008: inactivity, settings change, too many contexts) are immediate: the
  protocol ends every context (ContextEnded reason "timeout"/"error"), emits SocketEnding and
  queues the Close at once; later send_audio/send_final calls are dropped. The graceful close
  (single "" / close_socket) queues Close(1000) only after the last `send_final`. Either way the
  I/O layer just drains `data_to_send()` after every call and closes when it yields a `Close`.
  Close reasons are trimmed to the 123-byte WebSocket limit (`fit_close_reason`): the
  inactivity close reads "Have not received ... of 20 seconds. Streaming input terminated.".
- bad input (invalid JSON, non-objects, wrong types, binary frames, frames over
  MAX_MESSAGE_CHARS, control characters or lone surrogates in a string field, see
  `client_messages`) -> an error frame `{"error", "message", "code"}`; the message is ignored
  and the connection keeps serving. Unknown keys/frames -> IgnoredMessage.
- bounded work: released text reaches the engine as Synthesize pieces of at most
  MAX_PIECE_CHARS (`textbuffer.bounded_pieces`); a message that would make the connection hold
  more than MAX_PENDING_CHARS of unspoken text (buffered, or released and not yet reported
  by `piece_done`) is refused with a `text_buffer_full` error frame, and nothing in it applies.
- a closed context speaks only its flushed text: each Synthesize carries `seq`; ContextEnded
  carries `speak_upto`; `wanted(context_id, seq)` answers for a piece before and during its
  synthesis (False for everything once the connection is closed, failed or lost:
  `connection_lost(now)` when the client goes, with or without a close frame).

Client role (`ClientProtocol`): builds every client message, enforces MAX_CONTEXTS locally
(TooManyContextsError), turns server frames into events (bad server input becomes
ProtocolViolation, never an exception), and runs the client's two timers with the same
`next_deadline()` / `tick(now)` idiom: keep-alives before the server's inactivity timeout, and
AudioTimedOut for a flushed or closed context the server stopped answering.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from .client_messages import (
    MAX_MESSAGE_CHARS,
    ClientMessage,
    parse_client_message,
)
from .client_protocol import (
    AudioReceived,
    AudioTimedOut,
    ClientEvent,
    ClientProtocol,
    ContextFinal,
    IgnoredFrame,
    ProtocolViolation,
    ServerError,
    StaleAudio,
    classify_close,
)
from .errors import (
    INACTIVITY_REASON,
    MAX_CONTEXTS,
    MAX_CONTEXTS_MESSAGE,
    SETTINGS_CHANGED_REASON,
    InactivityTimeoutError,
    InvalidTextError,
    ProtocolError,
    QuotaExceededError,
    SettingsChangedError,
    TextBufferFullError,
    TooManyContextsError,
    fit_close_reason,
)
from .formats import DEFAULT_OUTPUT_FORMAT, OutputFormat
from .server_frames import (
    MAX_AUDIO_CHUNK_BYTES,
    Alignment,
    Close,
    encode_audio_frame,
    encode_error_frame,
    encode_final_frame,
)
from .settings import (
    DEFAULT_INACTIVITY_TIMEOUT,
    DEFAULT_SCHEDULE,
    MAX_INACTIVITY_TIMEOUT,
    GenerationConfig,
    PronunciationDictionaryLocator,
    Secret,
    StreamParams,
    VoiceSettings,
    api_key_from_query,
)
from .textbuffer import MAX_PIECE_CHARS, TextBuffer, bounded_pieces

__all__ = [
    "DEFAULT_INACTIVITY_TIMEOUT",
    "DEFAULT_OUTPUT_FORMAT",
    "DEFAULT_SCHEDULE",
    "INACTIVITY_REASON",
    "MAX_AUDIO_CHUNK_BYTES",
    "MAX_CONTEXTS",
    "MAX_INACTIVITY_TIMEOUT",
    "MAX_MESSAGE_CHARS",
    "MAX_PENDING_CHARS",
    "MAX_PIECE_CHARS",
    "SETTINGS_CHANGED_REASON",
    "Alignment",
    "AudioReceived",
    "AudioTimedOut",
    "ClientEvent",
    "ClientMessage",
    "ClientProtocol",
    "Close",
    "ConnectionState",
    "ContextEnded",
    "ContextFinal",
    "ContextStarted",
    "ContextState",
    "Flushed",
    "GenerationConfig",
    "IgnoredFrame",
    "IgnoredMessage",
    "InactivityTimeoutError",
    "InvalidTextError",
    "KeepAlive",
    "OutputFormat",
    "PronunciationDictionaryLocator",
    "ProtocolError",
    "ProtocolViolation",
    "QuotaExceededError",
    "Secret",
    "ServerError",
    "ServerEvent",
    "ServerProtocol",
    "SettingsChangedError",
    "SocketEnding",
    "StaleAudio",
    "StreamParams",
    "Synthesize",
    "TextBufferFullError",
    "TooManyContextsError",
    "VoiceSettings",
    "api_key_from_query",
    "classify_close",
    "fit_close_reason",
]

_RECENT_FINALS = 64  # remembered finalled context ids (stray keep-alives to them are ignored)
#: Unspoken text a connection may hold (buffered, or released and not yet synthesized); a
#: message that would exceed it is refused with a `text_buffer_full` error frame.
MAX_PENDING_CHARS = 32 * 1024


# =============================================================================================
# server events


@dataclass(frozen=True)
class ContextStarted:
    """A context's first message. `api_key`: the message's key, else the handshake's key."""

    context_id: str | None
    voice_settings: VoiceSettings | None
    generation_config: GenerationConfig
    pronunciation_dictionary_locators: tuple[PronunciationDictionaryLocator, ...]
    api_key: Secret | None


@dataclass(frozen=True)
class Synthesize:
    """Text the server must synthesize now, in order, at most MAX_PIECE_CHARS long.

    `flush`: the last piece released by a flush/close (the encoder may be finished after it).
    `seq`: the piece's number within its context (1, 2, ...); ask `ServerProtocol.wanted`
    before and during its synthesis. `first_text_at`: the `now` at which the context's first
    non-blank text arrived.
    """

    context_id: str | None
    text: str
    voice_settings: VoiceSettings | None
    flush: bool
    seq: int = field(default=0, compare=False)
    first_text_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ContextEnded:
    """No more text for this context: finish the pieces still wanted, then `send_final`.

    reason: "close" (single "", close_context, close_socket), "timeout" (inactivity), "error"
    (a fatal close; the socket is already closing and the final will be dropped) or "lost"
    (the client is gone). `speak_upto`: the last piece (`seq`) still to be spoken; later ones
    are abandoned (a closed context speaks only its flushed text).
    """

    context_id: str | None
    reason: str
    speak_upto: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Flushed:
    """A flush (or a close that implies one): every Synthesize of this context emitted so far
    must be spoken in full, even if the context is closed before it plays."""

    context_id: str | None


@dataclass(frozen=True)
class SocketEnding:
    """The protocol decided to close. Drain `data_to_send()`: the Close comes when due."""

    code: int
    reason: str


@dataclass(frozen=True)
class KeepAlive:
    """A keep-alive (context_id None on multi = the socket-level bare `{"text": ""}`)."""

    context_id: str | None


@dataclass(frozen=True)
class IgnoredMessage:
    """A message (or part of one) that had no effect; worth a warning log."""

    reason: str


ServerEvent = (
    ContextStarted | Synthesize | Flushed | ContextEnded | SocketEnding | KeepAlive | IgnoredMessage
)


# =============================================================================================
# server state


class ConnectionState(enum.Enum):
    OPEN = "open"  # serving
    CLOSING = "closing"  # graceful close decided; Close(1000) queued after the last final
    CLOSED = "closed"  # Close queued (or the client is gone); nothing more is sent


class ContextState(enum.Enum):
    OPEN = "open"  # accepting text
    ENDED = "ended"  # ContextEnded emitted; counts toward MAX_CONTEXTS until send_final


@dataclass
class _ServerContext:
    context_id: str | None
    voice_settings: VoiceSettings | None
    buffer: TextBuffer
    last_activity: float
    state: ContextState = ContextState.OPEN
    first_text_at: float | None = None
    released: int = 0  # Synthesize pieces emitted so far (their seq are 1..released)
    flushed_upto: int = 0  # the last piece released by a flush: it and all before must play
    speak_upto: int = 0  # once ENDED: the last piece still wanted
    unspoken: dict[int, int] = field(default_factory=dict)  # seq -> characters, not yet done


class ServerProtocol:
    """The server side of one connection. See the module docstring for the rules."""

    def __init__(
        self,
        params: StreamParams,
        now: float,
        header_api_key: Secret | None = None,
        *,
        max_pending_chars: int = MAX_PENDING_CHARS,
        max_piece_chars: int = MAX_PIECE_CHARS,
        first_clause: bool = False,
    ) -> None:
        self.params = params
        self.first_clause = first_clause  # see textbuffer: the first clause released at once
        self.header_api_key = header_api_key
        self.max_pending_chars = max_pending_chars
        self.max_piece_chars = max_piece_chars
        self._state = ConnectionState.OPEN
        self._contexts: dict[str | None, _ServerContext] = {}
        self._recent_finals: deque[str | None] = deque(maxlen=_RECENT_FINALS)
        self._started_single = False
        self._last_message = now
        self._last_now = now
        self._out: list[str | Close] = []

    # ------------------------------------------------------------------ properties
    @property
    def multi(self) -> bool:
        return self.params.multi

    @property
    def output_format(self) -> OutputFormat:
        return self.params.output_format

    @property
    def closed(self) -> bool:
        """True once a Close has been queued (or the client is gone)."""
        return self._state is ConnectionState.CLOSED

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def active_contexts(self) -> int:
        """Contexts counting toward MAX_CONTEXTS (open, or ended but not yet final)."""
        return len(self._contexts)

    @property
    def open_contexts(self) -> list[str | None]:
        return [c.context_id for c in self._contexts.values() if c.state is ContextState.OPEN]

    @property
    def pending_chars(self) -> int:
        """Unspoken text held: buffered, or released and not yet reported done or abandoned."""
        return sum(
            len(ctx.buffer.pending) + sum(ctx.unspoken.values()) for ctx in self._contexts.values()
        )

    # ------------------------------------------------------------------ the closed-context rule
    def wanted(self, context_id: str | None, seq: int) -> bool:
        """Is piece `seq` of this context still to be spoken? False once the connection is
        closed or lost, the context is final or unknown, or the context ended and the piece
        came after its last flush. Ask before synthesizing a piece and after each engine chunk."""
        if self._state is ConnectionState.CLOSED:
            return False
        ctx = self._contexts.get(context_id)
        if ctx is None:
            return False
        return ctx.state is ContextState.OPEN or seq <= ctx.speak_upto

    def piece_done(self, context_id: str | None, seq: int) -> None:
        """Piece `seq` was spoken or abandoned: its characters no longer count as pending."""
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            ctx.unspoken.pop(seq, None)

    def connection_lost(self, now: float) -> list[ServerEvent]:
        """The client is gone (close frame or not): every context ends ("lost"), nothing is
        wanted any more, nothing more is queued."""
        self._last_now = max(self._last_now, now)
        events: list[ServerEvent] = [
            ContextEnded(ctx.context_id, "lost")
            for ctx in self._contexts.values()
            if ctx.state is ContextState.OPEN
        ]
        self._contexts.clear()
        self._state = ConnectionState.CLOSED
        self._out.clear()
        return events

    # ------------------------------------------------------------------ input
    def receive(self, data: str | bytes, now: float) -> list[ServerEvent]:
        """Handle one client frame. Timers do not fire here (call `tick`)."""
        self._last_now = max(self._last_now, now)
        if self._state is not ConnectionState.OPEN:
            return [
                IgnoredMessage(
                    f"message after the connection started closing ({self._state.value})"
                )
            ]
        try:
            msg = parse_client_message(data)
        except ProtocolError as err:
            self.send_error(err)
            return [IgnoredMessage(f"invalid message: {err.message}")]
        if msg.text and self.pending_chars + len(msg.text) > self.max_pending_chars:
            full = TextBufferFullError(
                f"message refused: this connection already holds {self.pending_chars} "
                f"characters of unspoken text and the limit is {self.max_pending_chars}; wait "
                "for audio before sending more, or send text in smaller pieces",
                code=1008,
            )
            self.send_error(full)
            return [IgnoredMessage(full.message)]
        self._last_message = now
        events: list[ServerEvent] = []
        if msg.unknown_keys:
            names = ", ".join(repr(k[:40]) for k in msg.unknown_keys[:5])
            events.append(IgnoredMessage(f"unknown keys ignored: {names}"))
        if self.multi:
            self._receive_multi(msg, now, events)
        else:
            self._receive_single(msg, now, events)
        return events

    def _receive_single(self, msg: ClientMessage, now: float, events: list[ServerEvent]) -> None:
        for name in ("context_id", "close_context", "close_socket"):
            if getattr(msg, name):
                events.append(IgnoredMessage(f"{name} is ignored on the single-context endpoint"))
        if not self._started_single:
            self._started_single = True
            ctx = self._start_context(None, msg, now, events)
            if ctx is None:
                return
            self._apply_text(ctx, msg, now, events, first=True, end_on_empty=True)
            return
        ctx = self._contexts.get(None)
        if ctx is None or ctx.state is not ContextState.OPEN:
            events.append(IgnoredMessage('message after end of input ({"text": ""}) ignored'))
            return
        ctx.last_activity = now
        self._apply_text(ctx, msg, now, events, first=False, end_on_empty=True)

    def _receive_multi(self, msg: ClientMessage, now: float, events: list[ServerEvent]) -> None:
        cid = msg.context_id
        names_context = (
            cid is not None
            or bool(msg.text)
            or msg.flush
            or msg.try_trigger_generation
            or msg.close_context
        )
        if names_context:
            self._context_message(cid, msg, now, events)
        elif msg.text == "" and not msg.close_socket:
            # the bare socket keep-alive: closes nothing, keeps the default context alive
            default = self._contexts.get(None)
            if default is not None and default.state is ContextState.OPEN:
                default.last_activity = now
            events.append(KeepAlive(None))
        elif not msg.close_socket:
            events.append(IgnoredMessage("message without text, context_id or action ignored"))
        if msg.close_socket and self._state is ConnectionState.OPEN:
            self._close_socket(events)

    def _context_message(
        self, cid: str | None, msg: ClientMessage, now: float, events: list[ServerEvent]
    ) -> None:
        ctx = self._contexts.get(cid)
        if ctx is not None and ctx.state is ContextState.ENDED:
            events.append(IgnoredMessage(f"context {cid!r} is closed; message ignored"))
            return
        if ctx is None:
            has_text = bool(msg.text) or msg.flush
            if cid in self._recent_finals and not has_text:
                events.append(IgnoredMessage(f"context {cid!r} already finished; message ignored"))
                return
            if msg.close_context:
                events.append(IgnoredMessage(f"close_context for unknown context {cid!r} ignored"))
                return
            ctx = self._start_context(cid, msg, now, events)
            if ctx is None:
                return
            self._apply_text(ctx, msg, now, events, first=True, end_on_empty=False)
        else:
            ctx.last_activity = now
            self._apply_text(ctx, msg, now, events, first=False, end_on_empty=False)
        if (
            msg.close_context
            and self._state is ConnectionState.OPEN
            and ctx.state is ContextState.OPEN
        ):
            self._end(ctx, "close", events)

    def _start_context(
        self, cid: str | None, msg: ClientMessage, now: float, events: list[ServerEvent]
    ) -> _ServerContext | None:
        if len(self._contexts) >= MAX_CONTEXTS:
            err = TooManyContextsError(message=MAX_CONTEXTS_MESSAGE)
            self._fail(1008, "max_active_conversations: too many active contexts", events, err)
            return None
        config = msg.generation_config or GenerationConfig()
        ctx = _ServerContext(
            context_id=cid,
            voice_settings=msg.voice_settings,
            buffer=TextBuffer(
                config, auto_mode=self.params.auto_mode, first_clause=self.first_clause
            ),
            last_activity=now,
        )
        self._contexts[cid] = ctx
        events.append(
            ContextStarted(
                context_id=cid,
                voice_settings=msg.voice_settings,
                generation_config=config,
                pronunciation_dictionary_locators=msg.pronunciation_dictionary_locators or (),
                api_key=msg.api_key if msg.api_key is not None else self.header_api_key,
            )
        )
        return ctx

    def _apply_text(
        self,
        ctx: _ServerContext,
        msg: ClientMessage,
        now: float,
        events: list[ServerEvent],
        *,
        first: bool,
        end_on_empty: bool,
    ) -> None:
        if not first:
            if msg.voice_settings is not None and msg.voice_settings != ctx.voice_settings:
                self._fail(1008, SETTINGS_CHANGED_REASON, events, None)
                return
            if msg.generation_config is not None:
                ctx.buffer.config = msg.generation_config
            if msg.pronunciation_dictionary_locators:
                events.append(
                    IgnoredMessage(
                        "pronunciation_dictionary_locators only count on the first message"
                    )
                )
        text = msg.text
        if end_on_empty and text == "":
            self._flush(ctx, events)
            self._end(ctx, "close", events)
            return
        if text:
            if ctx.first_text_at is None and text.strip():
                ctx.first_text_at = now
            ctx.buffer.append(text)
        if not first and not (msg.flush or msg.try_trigger_generation or msg.close_context):
            if text is None or not text.strip():
                events.append(KeepAlive(ctx.context_id))
        for chunk in ctx.buffer.take_ready():
            self._release(ctx, chunk, False, events)
        if msg.try_trigger_generation:
            for chunk in ctx.buffer.take_trigger():
                self._release(ctx, chunk, False, events)
        if msg.flush:
            self._flush(ctx, events)

    def _release(
        self, ctx: _ServerContext, text: str, flush: bool, events: list[ServerEvent]
    ) -> None:
        """Emit `text` as Synthesize pieces of bounded length (the engine's memory and the time
        to abandon a piece grow with its length)."""
        pieces = bounded_pieces(text, self.max_piece_chars)
        for index, piece in enumerate(pieces):
            ctx.released += 1
            ctx.unspoken[ctx.released] = len(piece)
            last = flush and index == len(pieces) - 1
            events.append(
                Synthesize(
                    ctx.context_id,
                    piece,
                    ctx.voice_settings,
                    last,
                    seq=ctx.released,
                    first_text_at=ctx.first_text_at,
                )
            )

    def _flush(self, ctx: _ServerContext, events: list[ServerEvent]) -> None:
        rest = ctx.buffer.take_all()
        if rest:
            self._release(ctx, rest, True, events)
        ctx.flushed_upto = ctx.released
        events.append(Flushed(ctx.context_id))

    def _end(self, ctx: _ServerContext, reason: str, events: list[ServerEvent]) -> None:
        """End a context: its unreleased text is dropped, released pieces after its last flush
        are no longer wanted (the rule lives here, not in the I/O layer)."""
        ctx.buffer.drop()
        ctx.state = ContextState.ENDED
        ctx.speak_upto = ctx.flushed_upto
        for seq in [s for s in ctx.unspoken if s > ctx.speak_upto]:
            del ctx.unspoken[seq]
        events.append(ContextEnded(ctx.context_id, reason, ctx.speak_upto))

    def _close_socket(self, events: list[ServerEvent]) -> None:
        for ctx in self._contexts.values():
            if ctx.state is ContextState.OPEN:
                self._flush(ctx, events)
                self._end(ctx, "close", events)
        self._state = ConnectionState.CLOSING
        events.append(SocketEnding(1000, ""))
        self._maybe_finish_closing()

    def _fail(
        self,
        code: int,
        reason: str,
        events: list[ServerEvent],
        error: ProtocolError | None,
        ended_reason: str = "error",
    ) -> None:
        """A fatal close: end every context, queue (error frame +) Close now."""
        for ctx in self._contexts.values():
            if ctx.state is ContextState.OPEN:
                ctx.buffer.drop()
                events.append(ContextEnded(ctx.context_id, ended_reason))
        self._contexts.clear()
        if error is not None:
            self._out.append(encode_error_frame(error))
        events.append(SocketEnding(code, reason))
        self._queue_close(code, reason)

    def _queue_close(self, code: int, reason: str) -> None:
        self._out.append(Close(code, fit_close_reason(reason)))
        self._state = ConnectionState.CLOSED

    def _maybe_finish_closing(self) -> None:
        if self._state is ConnectionState.CLOSING and not self._contexts:
            self._queue_close(1000, "")

    # ------------------------------------------------------------------ timers
    def _timeout(self) -> float:
        return self.params.inactivity_timeout

    def _context_deadlines(self) -> list[tuple[float, _ServerContext]]:
        return [
            (ctx.last_activity + self._timeout(), ctx)
            for ctx in self._contexts.values()
            if ctx.state is ContextState.OPEN
        ]

    def next_deadline(self) -> float | None:
        """When `tick` must next run (None: no timer pending)."""
        if self._state is not ConnectionState.OPEN:
            return None
        if not self.multi:
            ctx = self._contexts.get(None)
            if ctx is not None and ctx.state is ContextState.ENDED:
                return None
            return self._last_message + self._timeout()
        if self._contexts:
            deadlines = [d for d, _ in self._context_deadlines()]
            return min(deadlines) if deadlines else None
        return self._last_message + self._timeout()

    def tick(self, now: float) -> list[ServerEvent]:
        """Fire the inactivity timers due at `now`."""
        self._last_now = max(self._last_now, now)
        events: list[ServerEvent] = []
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return events
        reason = INACTIVITY_REASON(self._timeout())
        if not self.multi or not self._contexts:
            self._fail(1008, reason, events, None, ended_reason="timeout")
            return events
        for due, ctx in sorted(self._context_deadlines(), key=lambda item: item[0]):
            if now >= due:
                self._end(ctx, "timeout", events)
        return events

    # ------------------------------------------------------------------ output
    def send_audio(
        self,
        context_id: str | None,
        audio: bytes,
        alignment: Alignment | None,
        normalized_alignment: Alignment | None,
    ) -> None:
        """Queue an audio frame; dropped silently if the context is final/unknown or closed.

        Raises ValueError if `audio` exceeds MAX_AUDIO_CHUNK_BYTES (split it: clients keep a
        1 MiB incoming-message limit).
        """
        if len(audio) > MAX_AUDIO_CHUNK_BYTES:
            raise ValueError(
                f"audio chunk of {len(audio)} bytes exceeds {MAX_AUDIO_CHUNK_BYTES}: "
                "send smaller chunks"
            )
        if self._state is ConnectionState.CLOSED or context_id not in self._contexts:
            return
        self._out.append(
            encode_audio_frame(context_id, audio, alignment, normalized_alignment, multi=self.multi)
        )

    def send_final(self, context_id: str | None, now: float | None = None) -> None:
        """Queue `{"isFinal": true}` for a context and free its slot.

        Single context: then queues Close(1000, "") and the protocol is done. Multi after
        close_socket: Close(1000, "") follows the last final. `now` (optional) restarts the
        socket-level inactivity timer when the last context goes away.
        """
        ctx = self._contexts.pop(context_id, None)
        if ctx is None or self._state is ConnectionState.CLOSED:
            return
        if now is not None:
            self._last_now = max(self._last_now, now)
        self._recent_finals.append(context_id)
        self._out.append(encode_final_frame(context_id, multi=self.multi))
        if not self.multi:
            self._queue_close(1000, "")
            return
        if not self._contexts:
            self._last_message = max(self._last_message, self._last_now)
        self._maybe_finish_closing()

    def send_error(self, err: ProtocolError) -> None:
        """Queue an error frame `{"error", "message", "code"}` (the connection stays open)."""
        if self._state is not ConnectionState.CLOSED:
            self._out.append(encode_error_frame(err))

    def send_close(self, code: int, reason: str = "") -> list[ServerEvent]:
        """Close now (server's own decision, e.g. shutdown or auth failure)."""
        events: list[ServerEvent] = []
        if self._state is not ConnectionState.CLOSED:
            self._fail(code, reason, events, None)
        return events

    def data_to_send(self) -> list[str | Close]:
        """Frames to write, in order; a Close is always last."""
        out, self._out = self._out, []
        return out
