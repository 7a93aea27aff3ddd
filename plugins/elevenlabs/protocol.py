"""Sans-I/O ElevenLabs WebSocket TTS protocol: server and client roles, single and multi context.

After python-websockets' `protocol.py` and h11's `_state.py`: no sockets, no clocks, no sleeps.
Frames go in (`receive(data, now)`), events come out, frames to write come from
`data_to_send()`. Time only enters as the `now` argument (monotonic seconds); timers fire in
`tick(now)` only (never inside `receive`), and `next_deadline()` says when to call it.

Status: every rule below is implemented and covered by tests/test_protocol.py (plus
tests/test_alignment.py). The client role lives in `client_protocol.py`, the wire types in
`messages.py`; both are re-exported here, so `from plugins.elevenlabs.protocol import X` works
for every public name.

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
  MAX_MESSAGE_CHARS) -> an error frame `{"error", "message", "code"}`; the message is ignored
  and the connection keeps serving. Unknown keys/frames -> IgnoredMessage.

Client role (`ClientProtocol`): builds every client message, enforces MAX_CONTEXTS locally
(TooManyContextsError), tracks what needs a keep-alive, and turns server frames into events;
bad server input becomes ProtocolViolation, never an exception.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from .client_protocol import (
    AudioReceived,
    ClientEvent,
    ClientProtocol,
    ContextFinal,
    IgnoredFrame,
    ProtocolViolation,
    ServerError,
    StaleAudio,
    classify_close,
)
from .messages import (
    DEFAULT_INACTIVITY_TIMEOUT,
    DEFAULT_OUTPUT_FORMAT,
    DEFAULT_SCHEDULE,
    INACTIVITY_REASON,
    MAX_AUDIO_CHUNK_BYTES,
    MAX_CONTEXTS,
    MAX_CONTEXTS_MESSAGE,
    MAX_INACTIVITY_TIMEOUT,
    MAX_MESSAGE_CHARS,
    SETTINGS_CHANGED_REASON,
    Alignment,
    ClientMessage,
    Close,
    GenerationConfig,
    InactivityTimeoutError,
    PronunciationDictionaryLocator,
    ProtocolError,
    QuotaExceededError,
    Secret,
    SettingsChangedError,
    StreamParams,
    TooManyContextsError,
    VoiceSettings,
    api_key_from_query,
    encode_audio_frame,
    encode_final_frame,
    fit_close_reason,
    parse_client_message,
)
from .messages import dumps as _dumps
from .textbuffer import TextBuffer

__all__ = [
    "DEFAULT_INACTIVITY_TIMEOUT",
    "DEFAULT_OUTPUT_FORMAT",
    "DEFAULT_SCHEDULE",
    "INACTIVITY_REASON",
    "MAX_AUDIO_CHUNK_BYTES",
    "MAX_CONTEXTS",
    "MAX_INACTIVITY_TIMEOUT",
    "MAX_MESSAGE_CHARS",
    "SETTINGS_CHANGED_REASON",
    "Alignment",
    "AudioReceived",
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
    "KeepAlive",
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
    "TooManyContextsError",
    "VoiceSettings",
    "api_key_from_query",
    "classify_close",
    "fit_close_reason",
]

_RECENT_FINALS = 64  # remembered finalled context ids (stray keep-alives to them are ignored)


# =============================================================================================
# server events


@dataclass(frozen=True)
class ContextStarted:
    """A context's first message. `api_key`: the message's key, else the header key."""

    context_id: str | None
    voice_settings: VoiceSettings | None
    generation_config: GenerationConfig
    pronunciation_dictionary_locators: tuple[PronunciationDictionaryLocator, ...]
    api_key: Secret | None


@dataclass(frozen=True)
class Synthesize:
    """Text the server must synthesize now, in order. `flush`: released by a flush/close."""

    context_id: str | None
    text: str
    voice_settings: VoiceSettings | None
    flush: bool


@dataclass(frozen=True)
class ContextEnded:
    """No more text for this context: finish its Synthesize events, then `send_final`.

    reason: "close" (single "", close_context, close_socket), "timeout" (inactivity) or "error"
    (a fatal close; the socket is already closing and the final will be dropped).
    """

    context_id: str | None
    reason: str


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
    CLOSED = "closed"  # Close queued; nothing more is sent


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


class ServerProtocol:
    """The server side of one connection. See the module docstring for the rules."""

    def __init__(
        self, params: StreamParams, now: float, header_api_key: Secret | None = None
    ) -> None:
        self.params = params
        self.header_api_key = header_api_key
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
    def closed(self) -> bool:
        """True once a Close has been queued."""
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
        self._last_message = now
        events: list[ServerEvent] = []
        if msg.unknown_keys:
            names = ", ".join(k[:40] for k in msg.unknown_keys[:5])
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
            self._apply_text(ctx, msg, events, first=True, end_on_empty=True)
            return
        ctx = self._contexts.get(None)
        if ctx is None or ctx.state is not ContextState.OPEN:
            events.append(IgnoredMessage('message after end of input ({"text": ""}) ignored'))
            return
        ctx.last_activity = now
        self._apply_text(ctx, msg, events, first=False, end_on_empty=True)

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
            self._apply_text(ctx, msg, events, first=True, end_on_empty=False)
        else:
            ctx.last_activity = now
            self._apply_text(ctx, msg, events, first=False, end_on_empty=False)
        if (
            msg.close_context
            and self._state is ConnectionState.OPEN
            and ctx.state is ContextState.OPEN
        ):
            ctx.buffer.drop()
            ctx.state = ContextState.ENDED
            events.append(ContextEnded(cid, "close"))

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
            buffer=TextBuffer(config, auto_mode=self.params.auto_mode),
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
            self._end_single(ctx, events)
            return
        if text:
            ctx.buffer.append(text)
        if not first and not (msg.flush or msg.try_trigger_generation or msg.close_context):
            if text is None or not text.strip():
                events.append(KeepAlive(ctx.context_id))
        chunks = ctx.buffer.take_ready()
        for chunk in chunks:
            events.append(Synthesize(ctx.context_id, chunk, ctx.voice_settings, False))
        if msg.try_trigger_generation:
            for chunk in ctx.buffer.take_trigger():
                events.append(Synthesize(ctx.context_id, chunk, ctx.voice_settings, False))
        if msg.flush:
            self._flush(ctx, events)

    def _flush(self, ctx: _ServerContext, events: list[ServerEvent]) -> None:
        rest = ctx.buffer.take_all()
        if rest:
            events.append(Synthesize(ctx.context_id, rest, ctx.voice_settings, True))
        events.append(Flushed(ctx.context_id))

    def _end_single(self, ctx: _ServerContext, events: list[ServerEvent]) -> None:
        self._flush(ctx, events)
        ctx.state = ContextState.ENDED
        events.append(ContextEnded(ctx.context_id, "close"))

    def _close_socket(self, events: list[ServerEvent]) -> None:
        for ctx in self._contexts.values():
            if ctx.state is ContextState.OPEN:
                self._flush(ctx, events)
                ctx.state = ContextState.ENDED
                events.append(ContextEnded(ctx.context_id, "close"))
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
            self._out.append(_dumps(error.to_frame()))
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
                ctx.buffer.drop()
                ctx.state = ContextState.ENDED
                events.append(ContextEnded(ctx.context_id, "timeout"))
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
            self._out.append(_dumps(err.to_frame()))

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
