"""What differs between media-stream platforms: field and event names, as one small object.

Twilio's Media Streams JSON is the reference (`TWILIO`). Platforms that copied it differ mostly in
names: snake_case ids, another name for the stream id, other event names for outbound audio and
clear. A `Dialect` maps those names; `protocol.py` reads and writes messages only through it, so a
second platform is a new `Dialect(...)` value, or a subclass overriding one `encode_*` method when
a message's shape differs (not only its names).

Only `TWILIO` is shipped and tested against the documented messages; other platforms are left
to whoever can check them against their own documentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Dialect:
    """Field and event names of one platform's media-stream JSON."""

    name: str
    # ids and fields
    event: str = "event"
    stream_id: str = "streamSid"
    call_id: str = "callSid"
    account_id: str = "accountSid"
    sequence: str = "sequenceNumber"
    custom_parameters: str = "customParameters"
    media_format: str = "mediaFormat"
    encoding: str = "encoding"
    sample_rate: str = "sampleRate"
    channels: str = "channels"
    tracks: str = "tracks"
    # events in (platform -> bot) and out (bot -> platform)
    ev_connected: str = "connected"
    ev_start: str = "start"
    ev_media: str = "media"
    ev_mark: str = "mark"
    ev_dtmf: str = "dtmf"
    ev_stop: str = "stop"
    ev_clear: str = "clear"
    #: encodings in `mediaFormat.encoding` that mean 8 kHz G.711 mu-law
    ulaw_encodings: tuple[str, ...] = ("audio/x-mulaw",)
    ulaw_encoding_out: str = "audio/x-mulaw"

    # ---- bot -> platform -------------------------------------------------------------------

    def encode_media(self, stream_id: str, payload_b64: str) -> dict[str, Any]:
        return {self.event: self.ev_media, self.stream_id: stream_id,
                "media": {"payload": payload_b64}}

    def encode_mark(self, stream_id: str, name: str) -> dict[str, Any]:
        return {self.event: self.ev_mark, self.stream_id: stream_id, "mark": {"name": name}}

    def encode_clear(self, stream_id: str) -> dict[str, Any]:
        return {self.event: self.ev_clear, self.stream_id: stream_id}

    # ---- platform -> bot (used by our caller simulator) --------------------------------------

    def encode_connected(self) -> dict[str, Any]:
        return {self.event: self.ev_connected, "protocol": "Call", "version": "1.0.0"}

    def encode_start(
        self,
        seq: int,
        stream_id: str,
        call_id: str,
        account_id: str,
        custom_parameters: dict[str, str],
    ) -> dict[str, Any]:
        return {
            self.event: self.ev_start,
            self.sequence: str(seq),
            self.stream_id: stream_id,
            "start": {
                self.stream_id: stream_id,
                self.account_id: account_id,
                self.call_id: call_id,
                self.tracks: ["inbound"],
                self.custom_parameters: dict(custom_parameters),
                self.media_format: {
                    self.encoding: self.ulaw_encoding_out,
                    self.sample_rate: 8000,
                    self.channels: 1,
                },
            },
        }

    def encode_inbound_media(
        self, seq: int, stream_id: str, chunk: int, timestamp_ms: int, payload_b64: str
    ) -> dict[str, Any]:
        return {
            self.event: self.ev_media,
            self.sequence: str(seq),
            self.stream_id: stream_id,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(timestamp_ms),
                      "payload": payload_b64},
        }

    def encode_mark_echo(self, seq: int, stream_id: str, name: str) -> dict[str, Any]:
        return {self.event: self.ev_mark, self.sequence: str(seq), self.stream_id: stream_id,
                "mark": {"name": name}}

    def encode_dtmf(self, seq: int, stream_id: str, digit: str) -> dict[str, Any]:
        return {self.event: self.ev_dtmf, self.sequence: str(seq), self.stream_id: stream_id,
                "dtmf": {"track": "inbound_track", "digit": digit}}

    def encode_stop(
        self, seq: int, stream_id: str, call_id: str, account_id: str
    ) -> dict[str, Any]:
        return {self.event: self.ev_stop, self.sequence: str(seq), self.stream_id: stream_id,
                "stop": {self.account_id: account_id, self.call_id: call_id}}


#: Twilio Media Streams (bidirectional, `<Connect><Stream>`).
TWILIO = Dialect(name="twilio")
