"""One timeline per turn: named marks on the conversation's one clock, and every latency defined
once, from two marks.

The clock is the transport's (`Transport.now()`: stream seconds, so user audio, agent audio and
events line up exactly in recordings), or `MonotonicClock` where there is no transport. A mark
is set by whoever sees the moment happen (the voice loop for the user's speech, the turn for the
LLM and the TTS, the output for playout), always with ``clock.now()`` or a time on that clock.

`LATENCIES` is the single definition of every latency: `metrics.json`, the CLI's lines, the
report, the timeline picture and the benchmarks all read it through `TurnTimeline.latency`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["LATENCIES", "MARKS", "Clock", "Latency", "MonotonicClock", "TurnTimeline"]


class Clock(Protocol):
    """The conversation's one clock, in seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """`time.monotonic()` itself: the clock of text-only sessions (no transport), so their
    marks compare with any other monotonic reading in the process."""

    def now(self) -> float:
        return time.monotonic()


#: Every mark a turn can have, in the order they usually happen.
MARKS: dict[str, str] = {
    "user_speech_start": "the user's voice began",
    "user_speech_end": "the user's last voiced frame",
    "user_paused": "the user paused: a tentative answer started (thinking ahead)",
    "end_of_turn": "the voice loop decided the user's turn had ended",
    "transcript": "STT returned the transcript",
    "llm_request": "the chat completion request went out",
    "first_token": "the LLM's first text delta arrived",
    "first_tool_call": "the model's first tool calls were complete",
    "tool_results": "the last tool round had every result",
    "first_text_sent": "the first text reached the TTS socket",
    "first_audio_byte": "the TTS's first audio arrived",
    "first_audio_played": "the output played the answer's first sample",
    "last_token": "the LLM's last text delta arrived",
    "flush_sent": "flush went to the TTS after the last text",
    "final_received": "the TTS said the context is complete",
    "audio_end": "the output played the answer's last sample",
    "barge_in_onset": "the user's voice began over the agent",
    "barge_in_decided": "the speech was confirmed and the turn cancelled",
    "output_silent": "the output stopped playing the answer (paused or cleared)",
    "turn_end": "the turn finished: played, failed, abandoned or cancelled",
}


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency: from one mark to another, in milliseconds."""

    start: str
    end: str
    meaning: str


#: Every latency, defined once.
LATENCIES: dict[str, Latency] = {
    "end_of_turn_wait": Latency(
        "user_speech_end", "end_of_turn", "silence waited before ending the turn"
    ),
    "stt": Latency("end_of_turn", "transcript", "end of turn to the transcript"),
    "ttft": Latency("llm_request", "first_token", "LLM time to first token"),
    "text_to_socket": Latency(
        "first_token", "first_text_sent", "first token to first text on the TTS socket"
    ),
    "ttfb": Latency("first_text_sent", "first_audio_byte", "TTS time to first byte"),
    "playout": Latency(
        "first_audio_byte", "first_audio_played", "first audio byte to the first sample played"
    ),
    "voice_to_voice": Latency(
        "user_speech_end", "first_audio_played", "the user stopped to the agent audible"
    ),
    "last_token_to_flush": Latency("last_token", "flush_sent", "last token to the flush"),
    "tools": Latency("first_tool_call", "tool_results", "the tool rounds, calls to results"),
    "barge_in_reaction": Latency(
        "barge_in_onset", "output_silent", "the user's voice over the agent to the agent silent"
    ),
}

for _latency in LATENCIES.values():
    assert _latency.start in MARKS and _latency.end in MARKS, _latency


@dataclass
class TurnTimeline:
    """The marks of one turn (seconds on the conversation clock) and the latencies between them.

    ``durations_ms`` holds measurements that are not the distance between two marks, reported
    by a component in its own units (STT compute time, the TTS engine's first chunk).
    """

    marks: dict[str, float] = field(default_factory=dict)
    durations_ms: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, t: float) -> None:
        """Set mark ``name`` to ``t`` (overwriting: for `last_token`)."""
        if name not in MARKS:
            raise ValueError(f"unknown mark {name!r}; known: {', '.join(MARKS)}")
        self.marks[name] = t

    def mark_first(self, name: str, t: float) -> None:
        """Set mark ``name`` unless it is set already (for the first_* marks)."""
        if name not in self.marks:
            self.mark(name, t)

    def at(self, name: str) -> float | None:
        """When mark ``name`` happened (None: it did not)."""
        return self.marks.get(name)

    def latency(self, name: str) -> float | None:
        """Latency ``name`` of `LATENCIES` in milliseconds (None if either mark is missing)."""
        spec = LATENCIES[name]
        start, end = self.marks.get(spec.start), self.marks.get(spec.end)
        if start is None or end is None:
            return None
        return round((end - start) * 1000.0, 2)

    def latencies(self) -> dict[str, float | None]:
        """Every latency of `LATENCIES`, in milliseconds."""
        return {name: self.latency(name) for name in LATENCIES}

    def ordered(self) -> Iterator[tuple[str, float]]:
        """The marks that happened, in time order."""
        return iter(sorted(self.marks.items(), key=lambda item: item[1]))

    def summary_line(self) -> str:
        """One human line: "stt 120 ms · ttft 130 ms · ttfb 90 ms · voice→voice 870 ms"."""
        parts = []
        for label, name in (
            ("stt", "stt"),
            ("ttft", "ttft"),
            ("text→socket", "text_to_socket"),
            ("ttfb", "ttfb"),
            ("voice→voice", "voice_to_voice"),
            ("barge-in", "barge_in_reaction"),
        ):
            value = self.latency(name)
            if value is not None:
                parts.append(f"{label} {format_ms(value)}")
        return " · ".join(parts) if parts else "no measurements"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: marks (seconds on the clock), latencies and durations (milliseconds)."""
        return {
            "marks": {name: round(t, 4) for name, t in self.ordered()},
            "latencies_ms": self.latencies(),
            "durations_ms": dict(self.durations_ms),
        }


def format_ms(ms: float | None) -> str:
    """ "—" for None, one decimal below 10 ms ("0.2 ms"), else whole milliseconds ("312 ms")."""
    if ms is None:
        return "—"
    return f"{ms:.1f} ms" if abs(ms) < 10 else f"{ms:.0f} ms"
