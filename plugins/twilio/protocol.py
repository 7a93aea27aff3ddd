"""Sans-I/O Media Streams protocol (Twilio's JSON over a WebSocket), in both roles.

No sockets, no clocks: WebSocket messages go in (`receive_text(text, now)`,
`receive_binary(data, now)`), typed events come out, text frames to write come from
`data_to_send()`. Timers are deadlines: `next_deadline()` says when to call `tick(now)`.
Field and event names come from a `Dialect` (dialect.py), so a near-identical platform is a
new dialect, not a new protocol.

Bot role (`BotProtocol`, what our server runs)
- in: `connected`, `start` (-> `Started` with the stream/call ids, customParameters and
  mediaFormat), `media` (-> `MediaReceived`, raw mu-law bytes), `mark` (-> `MarkEchoed`),
  `dtmf` (-> `DtmfReceived`), `stop` (-> `Stopped`; the protocol is then done).
- out: `send_media(ulaw)`, `send_mark(name)`, `send_clear()`, each carrying the streamSid;
  before `start` (no streamSid yet) they raise `ProtocolStateError`.
- bad input never raises: it becomes a `Violation(kind, detail, fatal, count)` event. Non-fatal
  ones (the message is dropped, the call goes on): `not_json`, `not_object`, `binary_frame`,
  `unknown_event`, `malformed`, `media_before_start`, `bad_base64`, `empty_payload`,
  `frame_length` (payload not 160 bytes: the audio is still delivered), `duplicate_start`,
  `wrong_stream`, `after_stop`, `unsupported_format`. Fatal ones end the call with a `Close`
  in `data_to_send()` and a clear reason: `too_large` (a frame over `max_message_chars`, 1009),
  `flood` (more messages or audio than a phone line can carry, 1008), `no_start` (no `start`
  within `start_timeout` seconds of the first message or of `connection_made`, 1008).
  `count` says how many of that kind so far, so the I/O layer logs each cause once.

Caller role (`CallerProtocol`, what our simulator runs): builds Twilio's messages
(`connected`, `start`, `media` with chunk/timestamp/sequenceNumber, `mark` echoes, `dtmf`,
`stop`) and turns the bot's `media` / `mark` / `clear` into `BotMedia` / `BotMark` /
`BotClear`; bad bot frames become `Violation` too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.errors import ProtocolError

from .dialect import TWILIO, Dialect

FRAME_BYTES = 160
"""20 ms of 8 kHz mu-law: the frame size Twilio sends and expects."""
SAMPLE_RATE = 8000

MAX_MESSAGE_CHARS = 64 * 1024
"""A Twilio message is a few hundred characters; anything this large is not Twilio."""


class ProtocolStateError(ProtocolError):
    """The bot tried to send before the stream started, or after it ended."""


# ---- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class StartInfo:
    """What the `start` message says about the call."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: MediaFormat


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Started:
    info: StartInfo


@dataclass(frozen=True, slots=True)
class MediaReceived:
    """20 ms (usually) of the caller's voice as raw mu-law."""

    payload: bytes
    chunk: int | None
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    name: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    digit: str


@dataclass(frozen=True, slots=True)
class Stopped:
    reason: str


@dataclass(frozen=True, slots=True)
class Violation:
    """Bad input from the peer: what kind, why, whether the call ends, how many so far."""

    kind: str
    detail: str
    fatal: bool
    count: int


@dataclass(frozen=True, slots=True)
class BotMedia:
    payload: bytes


@dataclass(frozen=True, slots=True)
class BotMark:
    name: str


@dataclass(frozen=True, slots=True)
class BotClear:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with this code and reason (the last thing in `data_to_send`)."""

    code: int
    reason: str


BotEvent = Connected | Started | MediaReceived | MarkEchoed | DtmfReceived | Stopped | Violation
CallerEvent = BotMedia | BotMark | BotClear | Violation
Outgoing = str | Close


# ---- shared plumbing -------------------------------------------------------------------------


@dataclass(slots=True)
class Limits:
    """Bounds on what a peer may send. Defaults fit a phone line with generous jitter."""

    max_message_chars: int = MAX_MESSAGE_CHARS
    #: messages per second sustained (Twilio sends 50 media/s) and the burst allowed on top
    messages_per_second: float = 150.0
    message_burst: float = 300.0
    #: seconds of inbound audio that may arrive ahead of real time (network catch-up)
    audio_ahead_seconds: float = 3.0
    start_timeout: float = 10.0


@dataclass(slots=True)
class _Bucket:
    rate: float
    capacity: float
    level: float = 0.0
    last: float | None = None

    def take(self, now: float, amount: float = 1.0) -> bool:
        if self.last is None:
            self.last = now
            self.level = self.capacity
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now
        if self.level < amount:
            return False
        self.level -= amount
        return True


_E = TypeVar("_E")


@dataclass(slots=True)
class _Base(Generic[_E]):
    dialect: Dialect = TWILIO
    limits: Limits = field(default_factory=Limits)
    _out: list[Outgoing] = field(default_factory=list)
    _counts: Counter[str] = field(default_factory=Counter)
    _closed: Close | None = None
    _messages: _Bucket = field(init=False)

    def __post_init__(self) -> None:
        self._messages = _Bucket(self.limits.messages_per_second, self.limits.message_burst)

    def receive_text(self, text: str, now: float) -> list[_E]:
        raise NotImplementedError

    def receive_binary(self, data: bytes, now: float) -> list[_E]:
        raise NotImplementedError

    def receive(self, message: str | bytes, now: float) -> list[_E]:
        """One WebSocket message as it came off the socket: text or binary."""
        if isinstance(message, str):
            return self.receive_text(message, now)
        return self.receive_binary(bytes(message), now)

    @property
    def closed(self) -> Close | None:
        """The fatal close, once one was decided (nothing is accepted after it)."""
        return self._closed

    @property
    def has_data_to_send(self) -> bool:
        """Whether `data_to_send` would return anything."""
        return bool(self._out)

    def data_to_send(self) -> list[Outgoing]:
        """Text frames to write, in order, then possibly a `Close`; empties the queue."""
        out, self._out = self._out, []
        return out

    def _violation(self, kind: str, detail: str, code: int = 0) -> Violation:
        self._counts[kind] += 1
        fatal = code != 0
        if fatal and self._closed is None:
            self._closed = Close(code, f"{kind}: {detail}"[:120])
            self._out.append(self._closed)
        return Violation(kind, detail, fatal, self._counts[kind])

    def _send(self, message: dict[str, Any]) -> None:
        self._out.append(_dumps(message))

    def _parse(self, text: str, now: float) -> dict[str, Any] | Violation:
        if len(text) > self.limits.max_message_chars:
            return self._violation(
                "too_large", f"a {len(text)}-character frame (limit "
                f"{self.limits.max_message_chars})", 1009)
        if not self._messages.take(now):
            return self._violation(
                "flood", f"more than {self.limits.messages_per_second:g} messages/s", 1008)
        try:
            message = json.loads(text)
        except json.JSONDecodeError as err:
            return self._violation("not_json", f"text frame is not JSON ({err.msg})")
        if not isinstance(message, dict):
            return self._violation("not_object", f"JSON {type(message).__name__}, not an object")
        return message

    def binary(self, data: bytes, now: float) -> Violation:
        if len(data) > self.limits.max_message_chars:
            return self._violation("too_large", f"a {len(data)}-byte binary frame", 1009)
        if not self._messages.take(now):
            return self._violation(
                "flood", f"more than {self.limits.messages_per_second:g} messages/s", 1008)
        return self._violation(
            "binary_frame", f"{len(data)}-byte binary frame (this protocol is JSON text)")


def _text(obj: object, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def _int(obj: object, key: str) -> int | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _dumps(message: dict[str, Any]) -> str:
    """A message as it goes on the wire (compact JSON)."""
    return json.dumps(message, separators=(",", ":"))


_PAYLOAD_SLOT = "\x00payload\x00"


def _template(message: dict[str, Any]) -> tuple[str, str] | None:
    """``message`` serialized around the one string value `_PAYLOAD_SLOT`: what comes before
    it and after it; None unless the slot appears exactly once (a stream id that holds it)."""
    text = _dumps(message)
    slot = json.dumps(_PAYLOAD_SLOT)[1:-1]
    if text.count(slot) != 1:
        return None
    before, _, after = text.partition(slot)
    return before, after


def _b64(payload: str) -> bytes | None:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


# ---- bot role --------------------------------------------------------------------------------


@dataclass(slots=True)
class BotProtocol(_Base[BotEvent]):
    """The bot's side of one media stream. See the module docstring for the rules."""

    start: StartInfo | None = None
    stopped: bool = False
    _start_deadline: float | None = None
    _first_audio_at: float | None = None
    _audio_bytes: int = 0
    _media_template: tuple[str, str] | None = None

    def connection_made(self, now: float) -> None:
        """Start the `start_timeout` clock (also started by the first message)."""
        if self._start_deadline is None and self.start is None:
            self._start_deadline = now + self.limits.start_timeout

    def next_deadline(self) -> float | None:
        if self.start is None and self._closed is None:
            return self._start_deadline
        return None

    def tick(self, now: float) -> list[BotEvent]:
        if (self.start is None and self._closed is None and self._start_deadline is not None
                and now >= self._start_deadline):
            return [self._violation(
                "no_start", f"no start message within {self.limits.start_timeout:g} s", 1008)]
        return []

    def receive_binary(self, data: bytes, now: float) -> list[BotEvent]:
        if self._closed is not None:
            return []
        self.connection_made(now)
        return [self.binary(data, now)]

    def receive_text(self, text: str, now: float) -> list[BotEvent]:
        """Feed one text frame; returns what it means (bad input as `Violation`)."""
        if self._closed is not None:
            return []
        self.connection_made(now)
        message = self._parse(text, now)
        if isinstance(message, Violation):
            return [message]
        d = self.dialect
        event = message.get(d.event)
        if not isinstance(event, str):
            return [self._violation("malformed", f"no {d.event!r} string field")]
        if self.stopped:
            return [self._violation("after_stop", f"{event!r} after stop")]
        if event == d.ev_connected:
            return [Connected(_text(message, "protocol") or "", _text(message, "version") or "")]
        if event == d.ev_start:
            return self._on_start(message)
        if event not in (d.ev_media, d.ev_mark, d.ev_dtmf, d.ev_stop):
            return [self._violation("unknown_event", f"event {event[:40]!r}")]
        if self.start is None:
            kind = "media_before_start" if event == d.ev_media else "malformed"
            return [self._violation(kind, f"{event!r} before start")]
        sid = _text(message, d.stream_id)
        if sid is not None and sid != self.start.stream_sid:
            return [self._violation("wrong_stream", f"{event!r} for another {d.stream_id}")]
        if event == d.ev_media:
            return self._on_media(message, now)
        if event == d.ev_mark:
            name = _text(message.get("mark"), "name")
            if name is None:
                return [self._violation("malformed", "mark without mark.name")]
            return [MarkEchoed(name)]
        if event == d.ev_dtmf:
            digit = _text(message.get("dtmf"), "digit")
            if digit is None or len(digit) != 1 or digit not in "0123456789*#ABCD":
                return [self._violation("malformed", f"dtmf digit {digit!r}")]
            return [DtmfReceived(digit)]
        self.stopped = True
        return [Stopped("caller hung up (stop)")]

    def _on_start(self, message: dict[str, Any]) -> list[BotEvent]:
        d = self.dialect
        if self.start is not None:
            return [self._violation("duplicate_start", "second start message ignored")]
        body = message.get("start")
        sid = _text(body, d.stream_id) or _text(message, d.stream_id)
        if not isinstance(body, dict) or not sid:
            return [self._violation("malformed", f"start without start.{d.stream_id}")]
        raw_params = body.get(d.custom_parameters)
        params = ({str(k): str(v) for k, v in raw_params.items() if isinstance(v, str | int)}
                  if isinstance(raw_params, dict) else {})
        fmt = body.get(d.media_format)
        media = MediaFormat(
            _text(fmt, d.encoding) or d.ulaw_encoding_out,
            _int(fmt, d.sample_rate) or SAMPLE_RATE,
            _int(fmt, d.channels) or 1,
        )
        tracks_raw = body.get(d.tracks)
        tracks = tuple(t for t in tracks_raw if isinstance(t, str)) if isinstance(
            tracks_raw, list) else ("inbound",)
        self.start = StartInfo(
            stream_sid=sid,
            call_sid=_text(body, d.call_id) or "",
            account_sid=_text(body, d.account_id) or "",
            tracks=tracks,
            custom_parameters=params,
            media_format=media,
        )
        events: list[BotEvent] = [Started(self.start)]
        if media.encoding not in d.ulaw_encodings or media.sample_rate != SAMPLE_RATE:
            events.append(self._violation(
                "unsupported_format",
                f"mediaFormat {media.encoding} {media.sample_rate} Hz (expected 8 kHz mu-law)",
                1003))
        return events

    def _on_media(self, message: dict[str, Any], now: float) -> list[BotEvent]:
        media = message.get("media")
        payload_b64 = _text(media, "payload")
        if payload_b64 is None:
            return [self._violation("malformed", "media without media.payload")]
        payload = _b64(payload_b64)
        if payload is None:
            return [self._violation("bad_base64", "media.payload is not valid base64")]
        if not payload:
            return [self._violation("empty_payload", "media.payload is empty")]
        # Audio flood: more audio than real time allows, past a catch-up allowance.
        if self._first_audio_at is None:
            self._first_audio_at = now
        self._audio_bytes += len(payload)
        allowed = (now - self._first_audio_at + self.limits.audio_ahead_seconds) * SAMPLE_RATE
        if self._audio_bytes > allowed:
            return [self._violation(
                "flood", f"inbound audio more than {self.limits.audio_ahead_seconds:g} s "
                "ahead of real time", 1008)]
        events: list[BotEvent] = []
        if len(payload) != FRAME_BYTES:
            events.append(self._violation(
                "frame_length", f"{len(payload)}-byte media frame (expected {FRAME_BYTES})"))
        events.append(MediaReceived(payload, _int(media, "chunk"), _int(media, "timestamp")))
        return events

    # ---- out ----

    def _sid(self) -> str:
        if self.start is None:
            raise ProtocolStateError("cannot send to the media stream before its start message")
        return self.start.stream_sid

    def send_media(self, ulaw: bytes) -> None:
        """Queue one `media` message with this mu-law audio (no re-encoding)."""
        if self._closed is not None or self.stopped:
            return
        payload = base64.b64encode(ulaw).decode("ascii")
        if self._media_template is None:
            self._media_template = _template(
                self.dialect.encode_media(self._sid(), _PAYLOAD_SLOT)) or ("", "")
        before, after = self._media_template
        if not before:  # no template for this stream: serialize each message
            self._send(self.dialect.encode_media(self._sid(), payload))
            return
        # The dialect's message with this payload, as json.dumps would write it: base64 has
        # nothing to escape, so it goes between the rest, serialized once per stream.
        self._out.append(before + payload + after)

    def send_mark(self, name: str) -> None:
        if self._closed is not None or self.stopped:
            return
        self._send(self.dialect.encode_mark(self._sid(), name))

    def send_clear(self) -> None:
        if self._closed is not None or self.stopped:
            return
        self._send(self.dialect.encode_clear(self._sid()))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Queue a close (the bot hangs up)."""
        if self._closed is None:
            self._closed = Close(code, reason[:120])
            self._out.append(self._closed)


# ---- caller role -----------------------------------------------------------------------------


@dataclass(slots=True)
class CallerProtocol(_Base[CallerEvent]):
    """Twilio's side of one media stream, for our simulator and tests."""

    stream_sid: str = "MZ00000000000000000000000000000000"
    call_sid: str = "CA00000000000000000000000000000000"
    account_sid: str = "AC00000000000000000000000000000000"
    _seq: int = 0
    _chunk: int = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send_connected(self) -> None:
        self._send(self.dialect.encode_connected())

    def send_start(self, custom_parameters: dict[str, str]) -> None:
        self._send(self.dialect.encode_start(
            self._next_seq(), self.stream_sid, self.call_sid, self.account_sid,
            custom_parameters))

    def send_media(self, ulaw: bytes, timestamp_ms: int) -> None:
        self._chunk += 1
        payload = base64.b64encode(ulaw).decode("ascii")
        self._send(self.dialect.encode_inbound_media(
            self._next_seq(), self.stream_sid, self._chunk, timestamp_ms, payload))

    def send_mark(self, name: str) -> None:
        self._send(self.dialect.encode_mark_echo(self._next_seq(), self.stream_sid, name))

    def send_dtmf(self, digit: str) -> None:
        self._send(self.dialect.encode_dtmf(self._next_seq(), self.stream_sid, digit))

    def send_stop(self) -> None:
        self._send(self.dialect.encode_stop(
            self._next_seq(), self.stream_sid, self.call_sid, self.account_sid))

    def receive_binary(self, data: bytes, now: float) -> list[CallerEvent]:
        return [self.binary(data, now)]

    def receive_text(self, text: str, now: float) -> list[CallerEvent]:
        message = self._parse(text, now)
        if isinstance(message, Violation):
            return [message]
        d = self.dialect
        event = message.get(d.event)
        if _text(message, d.stream_id) != self.stream_sid:
            return [self._violation("wrong_stream", f"{event!r} without our {d.stream_id}")]
        if event == d.ev_media:
            payload_b64 = _text(message.get("media"), "payload")
            payload = None if payload_b64 is None else _b64(payload_b64)
            if payload is None:
                return [self._violation("bad_base64", "media.payload missing or not base64")]
            return [BotMedia(payload)]
        if event == d.ev_mark:
            name = _text(message.get("mark"), "name")
            if name is None:
                return [self._violation("malformed", "mark without mark.name")]
            return [BotMark(name)]
        if event == d.ev_clear:
            return [BotClear()]
        return [self._violation("unknown_event", f"event {str(event)[:40]!r}")]
