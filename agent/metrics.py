"""Per-turn latency measurements: monotonic timestamps in, durations and a one-line summary out.

Timestamps are `time.monotonic()`-style seconds (any one clock per turn); this module never reads
the clock itself, the caller passes `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["MARKS", "TurnMetrics"]

#: The timestamp fields, in pipeline order.
MARKS: tuple[str, ...] = (
    "user_speech_end",  # VAD decided the user's turn ended
    "transcript_ready",  # STT returned
    "llm_request",  # chat completion request sent
    "first_token",  # first text delta from the LLM
    "first_text_sent",  # first text piece written to the TTS socket
    "first_audio_byte",  # first audio received from the TTS
    "first_audio_played",  # first audio handed to the output (what the user hears)
    "last_token",  # last text delta from the LLM
    "flush_sent",  # flush sent to the TTS at the end of the text
    "final_received",  # TTS said the context is complete
    "turn_end",  # playback finished, failed, or was abandoned
    "barge_in",  # the user's speech over the agent was accepted as a barge-in
    "interrupted_at",  # the agent's audio actually stopped after barge-in
)


@dataclass(slots=True)
class TurnMetrics:
    """Timestamps of one turn and the durations derived from them (seconds; None = not seen)."""

    turn: int = 0
    user_speech_end: float | None = None
    transcript_ready: float | None = None
    llm_request: float | None = None
    first_token: float | None = None
    first_text_sent: float | None = None
    first_audio_byte: float | None = None
    first_audio_played: float | None = None
    last_token: float | None = None
    flush_sent: float | None = None
    final_received: float | None = None
    turn_end: float | None = None
    barge_in: float | None = None
    interrupted_at: float | None = None
    deltas: int = 0  # text deltas received from the LLM
    text_pieces: int = 0  # pieces sent to the TTS
    error: str | None = None

    def mark(self, name: str, now: float) -> None:
        """Set timestamp `name` to `now` (overwriting: use for `last_token`)."""
        if name not in _MARK_SET:
            raise ValueError(f"unknown mark {name!r}; known: {', '.join(MARKS)}")
        setattr(self, name, now)

    def mark_first(self, name: str, now: float) -> None:
        """Set timestamp `name` only if it is not set yet (use for the first_* marks)."""
        if name not in _MARK_SET:
            raise ValueError(f"unknown mark {name!r}; known: {', '.join(MARKS)}")
        if getattr(self, name) is None:
            setattr(self, name, now)

    @property
    def origin(self) -> float | None:
        """The turn's reference time: user_speech_end, else transcript_ready, else llm_request."""
        for value in (self.user_speech_end, self.transcript_ready, self.llm_request):
            if value is not None:
                return value
        return None

    @property
    def interrupted(self) -> bool:
        return self.barge_in is not None

    @property
    def stt(self) -> float | None:
        """End of user speech to transcript."""
        return _between(self.user_speech_end, self.transcript_ready)

    @property
    def ttft(self) -> float | None:
        """LLM time to first token (request to first delta)."""
        return _between(self.llm_request, self.first_token)

    @property
    def text_to_socket(self) -> float | None:
        """First token to first text written to the TTS socket (chunker + framing)."""
        return _between(self.first_token, self.first_text_sent)

    @property
    def ttfb(self) -> float | None:
        """TTS time to first byte: first text sent to first audio received."""
        return _between(self.first_text_sent, self.first_audio_byte)

    @property
    def voice_to_voice(self) -> float | None:
        """End of the user's speech to the agent's first audio played: the felt latency."""
        return _between(self.user_speech_end, self.first_audio_played)

    @property
    def last_token_to_flush(self) -> float | None:
        """Last LLM token to the flush sent to the TTS."""
        return _between(self.last_token, self.flush_sent)

    @property
    def barge_in_stop(self) -> float | None:
        """Barge-in detected to the agent's audio stopped."""
        return _between(self.barge_in, self.interrupted_at)

    @property
    def total(self) -> float | None:
        """The turn's origin to its end."""
        return _between(self.origin, self.turn_end)

    def durations(self) -> dict[str, float | None]:
        """Every derived duration, in seconds."""
        return {
            "stt": self.stt,
            "ttft": self.ttft,
            "text_to_socket": self.text_to_socket,
            "ttfb": self.ttfb,
            "voice_to_voice": self.voice_to_voice,
            "last_token_to_flush": self.last_token_to_flush,
            "barge_in_stop": self.barge_in_stop,
            "total": self.total,
        }

    def summary_line(self) -> str:
        """One human line, e.g. "turn 2: ttft 312 ms · text→socket 1 ms · ttfb 140 ms · …".

        Parts that were not measured are left out.
        """
        parts: list[str] = []
        for label, value in (
            ("stt", self.stt),
            ("ttft", self.ttft),
            ("text→socket", self.text_to_socket),
            ("ttfb", self.ttfb),
            ("voice→voice", self.voice_to_voice),
        ):
            if value is not None:
                parts.append(f"{label} {_ms(value)}")
        if self.last_token_to_flush is not None:
            parts.append(f"flush +{_ms(self.last_token_to_flush)}")
        if self.interrupted:
            stop = self.barge_in_stop
            parts.append("interrupted" + (f" (stopped in {_ms(stop)})" if stop is not None else ""))
        if self.total is not None:
            parts.append(f"total {self.total:.2f} s")
        if self.error:
            parts.append(f"error: {self.error}")
        return f"turn {self.turn}: " + (" · ".join(parts) if parts else "no measurements")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record: durations in ms, marks as ms since the turn's origin."""
        origin = self.origin
        marks: dict[str, float | None] = {}
        for name in MARKS:
            value = getattr(self, name)
            marks[name] = None if value is None or origin is None else _round_ms(value - origin)
        return {
            "turn": self.turn,
            "interrupted": self.interrupted,
            "deltas": self.deltas,
            "text_pieces": self.text_pieces,
            "error": self.error,
            "durations_ms": {
                name: None if value is None else _round_ms(value)
                for name, value in self.durations().items()
            },
            "marks_ms": marks,
        }


_MARK_SET = frozenset(MARKS)
assert _MARK_SET == {f.name for f in fields(TurnMetrics)} - {
    "turn",
    "deltas",
    "text_pieces",
    "error",
}


def _between(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return end - start


def _round_ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _ms(seconds: float) -> str:
    """Milliseconds, with one decimal below 10 ms (e.g. "0.2 ms", "312 ms")."""
    ms = seconds * 1000.0
    return f"{ms:.1f} ms" if abs(ms) < 10 else f"{ms:.0f} ms"
