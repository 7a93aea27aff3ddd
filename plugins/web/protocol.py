"""Sans-I/O protocol between a browser tab and the server (server role).

No sockets, no clocks: WebSocket messages go in (`receive_text(text, now)`,
`receive_binary(data, now)`), typed events come out; what to write comes from
`data_to_send()` (text, bytes, or a final `Close`). Time is passed in.

The page's side (plugins/web/static/app.js), version 1:

page -> server
- text ``{"type": "hello", "version": 1, "sample_rate": R, "token": "..."}`` first. ``R`` is
  the page's capture rate (its AudioContext's, 8000..48000); the token is the one printed at
  start (carried in the page URL's fragment, so it never reaches an HTTP log), or absent when
  the server needs none.
- binary: the microphone, PCM16 little-endian mono at ``R``, exactly 20 ms a message
  (``R / 50`` samples).
- text ``{"type": "played", "played": N, "pos": P, "end": T, "level": L, "latency": S,
  "wall": W}``: the playout report, sent after each microphone frame. ``N`` is the agent
  samples the page has really played (cumulative, at the server's `OUTPUT_RATE`), ``P`` its
  position in the audio received (played or dropped by a clear), ``T`` the stream time
  (seconds of microphone sent) when the last real sample played becomes audible (or null),
  ``L`` the recent output RMS (int16 scale), ``S`` the output latency the browser reports
  (worklet to speaker, seconds), ``W`` the page's wall clock in ms (for the latency benchmark
  only).
- text ``{"type": "cleared", "id": K, "played": N}``: the page dropped its queue for clear K.
- text ``{"type": "turn_audio", "turn": n, "recv_wall": W1, "play_wall": W2}``: when the first
  audio of turn n arrived and when it began to play (benchmark only).

server -> page
- text ``{"type": "ready", "version": 1, "sample_rate": 16000, "frame_ms": 20}`` after hello.
- binary: the agent's voice, PCM16 little-endian mono at `OUTPUT_RATE`, any length.
- text ``{"type": "clear", "id": K}`` (drop all queued audio now), ``{"type": "pause"}``,
  ``{"type": "resume"}``, ``{"type": "flush"}`` (no more audio for now: play what is queued
  without waiting for the jitter buffer to fill), ``{"type": "turn", "turn": n, "wall": W}``
  (the next audio starts turn n), and the conversation's events for the page to show
  (`send_json`).

Bad input never raises: it becomes a `Violation(kind, detail, fatal, count)`. Non-fatal ones
drop the message and the tab goes on: ``not_json``, ``not_object``, ``unknown_type``,
``malformed``, ``duplicate_hello``, ``frame_size`` (a binary message that is not exactly 20 ms),
``flood`` (microphone frames faster than real time allows, or text messages faster than
`Limits.text_per_second`: dropped). Fatal ones close this tab's
socket with a clear reason: ``no_hello`` (binary or a report before hello, or no hello within
`Limits.hello_timeout`, 1008), ``bad_hello`` (1008), ``refused`` (a wrong token, 1008),
``too_large`` (1009), and a non-fatal kind repeated past `Limits.max_violations` (1008).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
OUTPUT_RATE = 16000
"""The rate of the agent's voice on the socket (the page resamples it for its device)."""
FRAME_MS = 20
MIN_RATE, MAX_RATE = 8000, 48000


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_chars: int = 4096
    max_binary_bytes: int = 8192  # 20 ms at 48 kHz is 1920 bytes
    hello_timeout: float = 10.0
    flood_burst_frames: int = 25  # 0.5 s of microphone may arrive early (a network hiccup)
    flood_slack: float = 1.25  # ...and frames may come this much faster than real time
    text_per_second: float = 150.0  # a page sends ~50 reports a second, plus a few others
    text_burst: int = 100
    max_violations: int = 50  # of one non-fatal kind, before the tab is closed


# ---- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    sample_rate: int
    token: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class MicAudio:
    """One 20 ms microphone frame at the hello's rate."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class PlayoutReport:
    played: int
    pos: int
    end: float | None
    level: float
    wall: float | None
    latency: float = 0.0  # seconds from the worklet to the speaker, as the browser says


@dataclass(frozen=True, slots=True)
class Cleared:
    clear_id: int
    played: int


@dataclass(frozen=True, slots=True)
class TurnAudio:
    turn: int
    recv_wall: float
    play_wall: float


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    detail: str
    fatal: bool
    count: int


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Event = Hello | MicAudio | PlayoutReport | Cleared | TurnAudio | Violation
Outgoing = str | bytes | Close


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class PageProtocol:
    """The server's side of one tab's socket."""

    def __init__(self, limits: Limits | None = None, token: str | None = None) -> None:
        self.limits = limits or Limits()
        self._token = token
        self.hello: Hello | None = None
        self.closed: Close | None = None
        self.counts: Counter[str] = Counter()
        self._out: list[Outgoing] = []
        self._opened_at: float | None = None
        self._credit = float(self.limits.flood_burst_frames)
        self._credit_at: float | None = None
        self._text_credit = float(self.limits.text_burst)
        self._text_at: float | None = None
        self.frames_in = 0

    def __repr__(self) -> str:
        return f"PageProtocol(hello={self.hello!r}, closed={self.closed!r})"

    # -- time -----------------------------------------------------------------------------------

    def connection_made(self, now: float) -> None:
        self._opened_at = now

    def next_deadline(self) -> float | None:
        if self.hello is None and self.closed is None and self._opened_at is not None:
            return self._opened_at + self.limits.hello_timeout
        return None

    def tick(self, now: float) -> list[Event]:
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            return [self._violation("no_hello", "no hello message in time", fatal=True)]
        return []

    # -- input ----------------------------------------------------------------------------------

    def receive_binary(self, data: bytes, now: float) -> list[Event]:
        if self.closed is not None:
            return []
        if len(data) > self.limits.max_binary_bytes:
            return [self._violation("too_large", f"a {len(data)}-byte audio message", True, 1009)]
        if self.hello is None:
            return [self._violation("no_hello", "audio before the hello message", fatal=True)]
        expected = self.hello.sample_rate * FRAME_MS // 1000 * 2
        if len(data) != expected:
            return [
                self._violation(
                    "frame_size",
                    f"an audio message of {len(data)} bytes; expected {expected} "
                    f"(20 ms of PCM16 mono at {self.hello.sample_rate} Hz)",
                )
            ]
        if not self._take_credit(now):
            return [self._violation("flood", "microphone frames faster than real time")]
        self.frames_in += 1
        return [MicAudio(bytes(data))]

    def _take_credit(self, now: float) -> bool:
        lim = self.limits
        if self._credit_at is not None:
            rate = 1000 / FRAME_MS * lim.flood_slack
            self._credit = min(
                float(lim.flood_burst_frames), self._credit + (now - self._credit_at) * rate
            )
        self._credit_at = now
        if self._credit < 1.0:
            return False
        self._credit -= 1.0
        return True

    def _take_text_credit(self, now: float) -> bool:
        lim = self.limits
        if self._text_at is not None:
            refill = (now - self._text_at) * lim.text_per_second
            self._text_credit = min(float(lim.text_burst), self._text_credit + refill)
        self._text_at = now
        if self._text_credit < 1.0:
            return False
        self._text_credit -= 1.0
        return True

    def receive_text(self, text: str, now: float) -> list[Event]:
        if self.closed is not None:
            return []
        if len(text) > self.limits.max_text_chars:
            what = f"a {len(text)}-character text message"
            return [self._violation("too_large", what, True, 1009)]
        if not self._take_text_credit(now):
            return [self._violation("flood", "text messages faster than a page sends them")]
        try:
            message = json.loads(text)
        except ValueError:
            what = "text where audio was expected" if self.hello else "a message that is not JSON"
            return [self._violation("not_json", what, fatal=self.hello is None)]
        if not isinstance(message, dict):
            return [self._violation("not_object", "a JSON message that is not an object")]
        kind = message.get("type")
        if kind == "hello":
            return self._hello(message)
        if self.hello is None:
            return [self._violation("no_hello", f"a {kind!r} message before hello", fatal=True)]
        if kind == "played":
            return self._played(message)
        if kind == "cleared":
            clear_id, played = message.get("id"), message.get("played")
            if isinstance(clear_id, int) and isinstance(played, int) and played >= 0:
                return [Cleared(clear_id, played)]
            return [self._violation("malformed", "a cleared message without id and played")]
        if kind == "turn_audio":
            turn = message.get("turn")
            recv, play = _number(message.get("recv_wall")), _number(message.get("play_wall"))
            if isinstance(turn, int) and recv is not None and play is not None:
                return [TurnAudio(turn, recv, play)]
            return [self._violation("malformed", "a turn_audio message without its times")]
        return [self._violation("unknown_type", f"an unknown message type {kind!r}")]

    def _hello(self, message: dict[str, Any]) -> list[Event]:
        if self.hello is not None:
            return [self._violation("duplicate_hello", "a second hello")]
        rate, token = message.get("sample_rate"), message.get("token")
        if message.get("version") != VERSION:
            return [
                self._violation(
                    "bad_hello",
                    f"protocol version {message.get('version')!r}; this server speaks "
                    f"{VERSION} (reload the page)",
                    fatal=True,
                )
            ]
        if not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE or rate % 50:
            return [
                self._violation("bad_hello", f"a capture rate of {rate!r} Hz", fatal=True)
            ]
        if token is not None and not isinstance(token, str):
            return [self._violation("bad_hello", "a token that is not a string", fatal=True)]
        if self._token is not None and not _same(token or "", self._token):
            return [
                self._violation(
                    "refused",
                    "a missing or wrong token: open the URL printed when the server started",
                    fatal=True,
                )
            ]
        self.hello = Hello(rate, token)
        self.send_json(
            {"type": "ready", "version": VERSION, "sample_rate": OUTPUT_RATE, "frame_ms": FRAME_MS}
        )
        return [self.hello]

    def _played(self, message: dict[str, Any]) -> list[Event]:
        played, pos = message.get("played"), message.get("pos")
        end, level = message.get("end"), _number(message.get("level"))
        if (
            not isinstance(played, int)
            or not isinstance(pos, int)
            or played < 0
            or pos < 0
            or level is None
            or (end is not None and _number(end) is None)
        ):
            return [self._violation("malformed", "a playout report without played/pos/level")]
        end_s = None if end is None else _number(end)
        latency = min(1.0, max(0.0, _number(message.get("latency")) or 0.0))
        wall = _number(message.get("wall"))
        return [PlayoutReport(played, pos, end_s, max(0.0, level), wall, latency)]

    def _violation(
        self, kind: str, detail: str, fatal: bool = False, code: int = 1008
    ) -> Violation:
        self.counts[kind] += 1
        count = self.counts[kind]
        if not fatal and count > self.limits.max_violations:
            fatal, detail = True, f"{detail} (too many: {count})"
        if count == 1 or fatal:
            self.send_json({"type": "error", "message": f"the server got {detail}", "kind": kind})
        if fatal:
            self.close(code, f"{kind}: {detail}"[:120])
        return Violation(kind, detail, fatal, count)

    # -- output ---------------------------------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        if self.closed is None:
            self._out.append(json.dumps(message, separators=(",", ":")))

    def send_audio(self, pcm: bytes) -> None:
        if self.closed is None and pcm:
            self._out.append(bytes(pcm))

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = Close(code, reason)
            self._out.append(self.closed)

    def data_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


__all__ = [
    "FRAME_MS",
    "OUTPUT_RATE",
    "VERSION",
    "Cleared",
    "Close",
    "Event",
    "Hello",
    "Limits",
    "MicAudio",
    "PageProtocol",
    "PlayoutReport",
    "TurnAudio",
    "Violation",
]
