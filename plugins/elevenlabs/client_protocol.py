"""The client role of the ElevenLabs WebSocket TTS protocol (sans-I/O), re-exported by `protocol`.

`ClientProtocol` builds every client message, enforces MAX_CONTEXTS locally (closed contexts
count until their final arrives), tracks which contexts need a keep-alive, and turns server
frames into events. Bad server input becomes a ProtocolViolation event, never an exception.
`classify_close` maps a server close to the most specific ProtocolError.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .client_messages import ClientMessage
from .errors import (
    MAX_CONTEXTS,
    InactivityTimeoutError,
    ProtocolError,
    QuotaExceededError,
    SettingsChangedError,
    TooManyContextsError,
)
from .server_frames import (
    MAX_SERVER_FRAME_BYTES,
    Alignment,
    decode_audio,
    frame_context_id,
    optional_alignment,
    parse_server_frame,
)
from .settings import GenerationConfig, PronunciationDictionaryLocator, Secret, VoiceSettings

_RECENT_FINALS = 64  # remembered finalled context ids (stray keep-alives/closes are no-ops)

__all__ = [
    "MAX_SERVER_FRAME_BYTES",
    "AudioReceived",
    "AudioTimedOut",
    "ClientEvent",
    "ClientProtocol",
    "ContextFinal",
    "IgnoredFrame",
    "ProtocolViolation",
    "ServerError",
    "StaleAudio",
    "classify_close",
]


# =============================================================================================
# client events


@dataclass(frozen=True)
class AudioReceived:
    context_id: str | None
    audio: bytes = field(repr=False)
    alignment: Alignment | None
    normalized_alignment: Alignment | None


@dataclass(frozen=True)
class ContextFinal:
    context_id: str | None


@dataclass(frozen=True)
class ServerError:
    error: str
    message: str
    code: int | None
    context_id: str | None = None


@dataclass(frozen=True)
class StaleAudio:
    """Audio for a context that is unknown or already final: dropped."""

    context_id: str | None


@dataclass(frozen=True)
class IgnoredFrame:
    reason: str


@dataclass(frozen=True)
class ProtocolViolation:
    """The server sent something malformed; the frame (or part of it) was dropped."""

    reason: str


@dataclass(frozen=True)
class AudioTimedOut:
    """A context was flushed or closed, and then neither audio nor its final came for
    `seconds`: the server may be stuck. The protocol stops timing it; the I/O fails it."""

    context_id: str | None
    seconds: float


ClientEvent = (
    AudioReceived
    | ContextFinal
    | ServerError
    | StaleAudio
    | IgnoredFrame
    | ProtocolViolation
    | AudioTimedOut
)


# =============================================================================================
# client role


class ClientContextState(enum.Enum):
    OPEN = "open"  # init sent, text may follow
    CLOSED = "closed"  # close_context / "" / close_socket sent; counts until its final


@dataclass
class _ClientContext:
    state: ClientContextState
    last_sent: float
    finish_asked_at: float | None = None  # the first flush or close since the last text
    last_audio_at: float | None = None  # the last audio received (or delivered, see I/O)
    timed_out: bool = False

    def audio_deadline(self, timeout: float) -> float | None:
        if self.finish_asked_at is None or self.timed_out:
            return None
        return max(self.finish_asked_at, self.last_audio_at or 0.0) + timeout


class ClientProtocol:
    """The client side of one connection (single or multi context).

    Timers, both given in seconds and both optional: `keepalive_interval` (an open context, or
    on multi an idle socket, gets a keep-alive when nothing was sent to it for that long) and
    `audio_timeout` (a flushed or closed context that gets neither audio nor its final for that
    long yields AudioTimedOut). `next_deadline()` says when `tick(now)` must run; keep-alives
    that `tick` decides on are queued for `data_to_send()`. `now` (optional) is when the socket
    opened: the idle socket's keep-alive counts from it.
    """

    def __init__(
        self,
        multi: bool = True,
        *,
        keepalive_interval: float | None = None,
        audio_timeout: float | None = None,
        now: float | None = None,
    ) -> None:
        self.multi = multi
        self.keepalive_interval = keepalive_interval
        self.audio_timeout = audio_timeout
        self._contexts: dict[str | None, _ClientContext] = {}
        self._finished: deque[str | None] = deque(maxlen=_RECENT_FINALS)
        self._socket_last_sent: float | None = now
        self._single_used = False
        self._socket_closing = False
        self._out: list[str] = []

    # ------------------------------------------------------------------ properties
    @property
    def open_contexts(self) -> list[str | None]:
        return [cid for cid, c in self._contexts.items() if c.state is ClientContextState.OPEN]

    @property
    def counted_contexts(self) -> int:
        """Contexts the server counts toward MAX_CONTEXTS (open or closed-not-final)."""
        return len(self._contexts)

    @property
    def done(self) -> bool:
        """Input ended (single "" / close_socket) and every final has arrived."""
        ended = self._socket_closing or (not self.multi and self._single_used)
        return ended and not self._contexts

    # ------------------------------------------------------------------ sending
    def _send(self, msg: ClientMessage, now: float, context_id: str | None) -> None:
        self._out.append(msg.encode())
        self._socket_last_sent = now
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            ctx.last_sent = now

    def _check_cid(self, context_id: str | None) -> None:
        if not self.multi and context_id is not None:
            raise ValueError("single-context connections have no context ids: pass None")
        if context_id == "":
            raise ValueError("context_id must be a non-empty string (or None for the default)")
        if self._socket_closing:
            raise ValueError("close_socket was already sent: open a new connection")

    def _open(self, context_id: str | None, action: str) -> _ClientContext:
        self._check_cid(context_id)
        ctx = self._contexts.get(context_id)
        if ctx is None:
            raise ValueError(
                f"{action}: context {context_id!r} is not open; call open_context first"
            )
        if ctx.state is not ClientContextState.OPEN:
            raise ValueError(f"{action}: context {context_id!r} is already closed")
        return ctx

    def open_context(
        self,
        context_id: str | None,
        now: float,
        *,
        voice_settings: VoiceSettings | None = None,
        generation_config: GenerationConfig | None = None,
        pronunciation_dictionary_locators: Sequence[PronunciationDictionaryLocator] = (),
        api_key: Secret | None = None,
    ) -> None:
        """Send a context's init message `{"text": " ", ...}`.

        Raises TooManyContextsError if MAX_CONTEXTS contexts are counted (closed ones count
        until their final arrives), ValueError on misuse (reused id, second single context).
        """
        self._check_cid(context_id)
        if not self.multi and self._single_used:
            raise ValueError(
                "a single-context connection carries one context: open a new connection"
            )
        if context_id in self._contexts:
            raise ValueError(f"context {context_id!r} is already open (or not yet final)")
        if len(self._contexts) >= MAX_CONTEXTS:
            raise TooManyContextsError(
                message=f"cannot open another context: {len(self._contexts)} are counted (at most "
                f"{MAX_CONTEXTS}, closed ones count until their isFinal arrives); wait for a "
                "final or use a new connection"
            )
        self._single_used = True
        self._contexts[context_id] = _ClientContext(ClientContextState.OPEN, now)
        msg = ClientMessage(
            text=" ",
            context_id=context_id,
            voice_settings=voice_settings,
            generation_config=generation_config,
            pronunciation_dictionary_locators=tuple(pronunciation_dictionary_locators) or None,
            api_key=api_key,
        )
        self._send(msg, now, context_id)

    def send_text(
        self,
        context_id: str | None,
        text: str,
        now: float,
        *,
        flush: bool = False,
        try_trigger_generation: bool = False,
    ) -> None:
        """Send text to an open context. ValueError on "" (use flush/close) or a closed context."""
        if not isinstance(text, str) or text == "":
            raise ValueError(
                "text must be a non-empty string: an empty text closes (single) or is a "
                "keep-alive (multi); use end_of_input/keep_alive/flush instead"
            )
        ctx = self._open(context_id, "send_text")
        msg = ClientMessage(
            text=text,
            context_id=context_id,
            flush=flush,
            try_trigger_generation=try_trigger_generation,
        )
        self._send(msg, now, context_id)
        if flush:
            ctx.finish_asked_at = ctx.finish_asked_at or now
        else:  # more text after a mid-turn flush: the wait counts again from the next flush
            ctx.finish_asked_at = None

    def flush(self, context_id: str | None, now: float, text: str = "") -> None:
        """Ask the server to generate everything buffered now (the context stays open)."""
        ctx = self._open(context_id, "flush")
        if not text and not self.multi:
            text = " "  # on single context an empty text would close the stream
        self._send(ClientMessage(text=text, context_id=context_id, flush=True), now, context_id)
        ctx.finish_asked_at = ctx.finish_asked_at or now

    def keep_alive(self, context_id: str | None, now: float) -> None:
        """Send a keep-alive: multi `{"text": "", "context_id": C}` or bare `{"text": ""}`
        (context_id None = the socket); single `{"text": " "}`. Skipped silently for a context
        that is closed or already final (barge-in races)."""
        if self._socket_closing:
            return
        if not self.multi:
            ctx = self._contexts.get(None)
            if ctx is not None and ctx.state is ClientContextState.OPEN:
                self._send(ClientMessage(text=" "), now, None)
            return
        if context_id is None:
            self._send(ClientMessage(text=""), now, None)
            return
        ctx = self._contexts.get(context_id)
        if ctx is None:
            if context_id in self._finished:
                return
            raise ValueError(
                f"keep_alive: context {context_id!r} was never opened (a keep-alive would "
                "create it on the server); call open_context first"
            )
        if ctx.state is ClientContextState.OPEN:
            self._send(ClientMessage(text="", context_id=context_id), now, context_id)

    def close_context(self, context_id: str, now: float) -> None:
        """Multi only: `{"context_id": C, "close_context": true}`; C counts until its final.
        A no-op for a context already closed or final."""
        if not self.multi:
            raise ValueError("close_context is multi-context only: use end_of_input")
        ctx = self._contexts.get(context_id)
        if ctx is None:
            if context_id in self._finished:
                return
            raise ValueError(f"close_context: context {context_id!r} was never opened")
        if ctx.state is ClientContextState.CLOSED or self._socket_closing:
            return
        ctx.state = ClientContextState.CLOSED
        ctx.finish_asked_at = ctx.finish_asked_at or now
        self._send(ClientMessage(context_id=context_id, close_context=True), now, context_id)

    def end_of_input(self, now: float) -> None:
        """Single only: `{"text": ""}`: generate the rest, then the server sends final + closes."""
        if self.multi:
            raise ValueError("end_of_input is single-context only: use close_context/close_socket")
        ctx = self._open(None, "end_of_input")
        ctx.state = ClientContextState.CLOSED
        ctx.finish_asked_at = ctx.finish_asked_at or now
        self._send(ClientMessage(text=""), now, None)

    def close_socket(self, now: float) -> None:
        """Multi only: `{"close_socket": true}`: finish pending flushes, then the server closes."""
        if not self.multi:
            raise ValueError("close_socket is multi-context only: use end_of_input")
        if self._socket_closing:
            return
        for ctx in self._contexts.values():
            ctx.state = ClientContextState.CLOSED
            ctx.finish_asked_at = ctx.finish_asked_at or now
        self._send(ClientMessage(close_socket=True), now, None)
        self._socket_closing = True

    def keepalive_due(self, now: float, interval: float) -> list[str | None]:
        """Open contexts whose last message is at least `interval` old (None = the socket,
        listed only when no open context is due, since any context message keeps it alive)."""
        if self._socket_closing:
            return []
        due: list[str | None] = [
            cid
            for cid, ctx in self._contexts.items()
            if ctx.state is ClientContextState.OPEN and now - ctx.last_sent >= interval
        ]
        if not self.multi:
            return due
        if (
            not due
            and not self.open_contexts
            and self._socket_last_sent is not None
            and now - self._socket_last_sent >= interval
        ):
            due.append(None)
        return due

    def data_to_send(self) -> list[str]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """When `tick` must next run (None: no timer pending)."""
        deadlines: list[float] = []
        interval = self.keepalive_interval
        if interval is not None and not self._socket_closing:
            open_sent = [
                c.last_sent for c in self._contexts.values() if c.state is ClientContextState.OPEN
            ]
            deadlines.extend(t + interval for t in open_sent)
            if self.multi and not open_sent and self._socket_last_sent is not None:
                deadlines.append(self._socket_last_sent + interval)
        if self.audio_timeout is not None:
            for ctx in self._contexts.values():
                due = ctx.audio_deadline(self.audio_timeout)
                if due is not None:
                    deadlines.append(due)
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> list[ClientEvent]:
        """Fire the timers due at `now`: queue keep-alives, report contexts timed out."""
        events: list[ClientEvent] = []
        if self.keepalive_interval is not None:
            for context_id in self.keepalive_due(now, self.keepalive_interval):
                self.keep_alive(context_id, now)
        if self.audio_timeout is not None:
            for cid, ctx in self._contexts.items():
                due = ctx.audio_deadline(self.audio_timeout)
                if due is not None and now >= due:
                    ctx.timed_out = True
                    events.append(AudioTimedOut(cid, self.audio_timeout))
        return events

    def delivered(self, context_id: str | None, now: float) -> None:
        """The I/O layer handed this context's audio on at `now` (a slow consumer holds the
        socket's reader; the server is not late for that time): restarts its audio timer."""
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            ctx.last_audio_at = now
            ctx.timed_out = False

    # ------------------------------------------------------------------ receiving
    def receive(self, data: str | bytes, now: float) -> list[ClientEvent]:
        """Turn one server frame into events. Never raises for bad server input."""
        try:
            obj = parse_server_frame(data)
        except ProtocolError as err:
            return [ProtocolViolation(err.message)]
        try:
            cid = frame_context_id(obj) if self.multi else None
        except ProtocolError as err:
            return [ProtocolViolation(err.message)]
        if obj.get("error") is not None:
            code = obj.get("code")
            message = obj.get("message")
            return [
                ServerError(
                    error=str(obj["error"])[:200],
                    message=message[:2000] if isinstance(message, str) else "",
                    code=code if isinstance(code, int) and not isinstance(code, bool) else None,
                    context_id=cid,
                )
            ]
        events: list[ClientEvent] = []
        final = obj.get("isFinal")
        if final is not None and not isinstance(final, bool):
            events.append(ProtocolViolation("isFinal must be true, false or null"))
            final = None
        audio = obj.get("audio")
        if audio is not None:
            if not isinstance(audio, str):
                events.append(ProtocolViolation("audio must be a base64 string or null"))
            elif audio:
                events.extend(self._audio(cid, audio, obj, now))
        if final:
            if cid in self._contexts:
                del self._contexts[cid]
                self._finished.append(cid)
                events.append(ContextFinal(cid))
            else:
                events.append(IgnoredFrame(f"isFinal for unknown context {cid!r}"))
        if not events:
            keys = ", ".join(sorted(str(k)[:40] for k in obj)[:5])
            events.append(IgnoredFrame(f"frame without audio or isFinal ignored (keys: {keys})"))
        return events

    def _audio(
        self, cid: str | None, audio: str, obj: dict[str, object], now: float
    ) -> list[ClientEvent]:
        try:
            pcm = decode_audio(audio)
        except ProtocolError as err:
            return [ProtocolViolation(err.message)]
        ctx = self._contexts.get(cid)
        if ctx is None:
            return [StaleAudio(cid)]
        ctx.last_audio_at = now
        events: list[ClientEvent] = []
        try:
            alignment = optional_alignment(obj, "alignment")
        except ProtocolError as err:
            events.append(ProtocolViolation(err.message))
            alignment = None
        try:
            normalized = optional_alignment(obj, "normalizedAlignment", "normalized_alignment")
        except ProtocolError as err:
            events.append(ProtocolViolation(f"normalizedAlignment: {err.message}"))
            normalized = None
        events.append(AudioReceived(cid, pcm, alignment, normalized))
        return events


# =============================================================================================
# close classification


def classify_close(code: int, reason: str) -> ProtocolError:
    """Map a server close (code + reason) to the most specific ProtocolError."""
    lowered = reason.lower()
    shown = reason[:200]
    if "max_active_conversations" in lowered:
        return TooManyContextsError(
            message="the server closed the socket: too many active contexts "
            f"(code {code}: {shown}); close contexts and wait for their isFinal before "
            "opening new ones",
            code=code,
        )
    if "voice_settings" in lowered:
        return SettingsChangedError(
            message="the server closed the socket: voice_settings changed mid-context "
            f"(code {code}: {shown}); send voice_settings only on a context's first message",
            code=code,
        )
    if code == 1008 and ("timeout" in lowered or "have not received" in lowered):
        return InactivityTimeoutError(
            message=f"the server closed the socket for inactivity (code {code}: {shown}); send "
            "keep-alives more often than inactivity_timeout or raise it (max 180 s)",
            code=code,
        )
    if "quota" in lowered:
        return QuotaExceededError(
            message=f"the server closed the socket: quota exceeded (code {code}: {shown}); "
            "retrying will not help until the quota is raised",
            code=code,
        )
    return ProtocolError(
        message=f"the server closed the socket (code {code}: {shown or 'no reason given'})",
        code=code,
        error="connection_closed",
    )
