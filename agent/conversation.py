"""What happened in a conversation, on one clock: the record the reports are made from.

All times are seconds on the conversation's clock (the transport's stream clock), so user audio,
agent audio and events line up exactly in `conversation.wav` and the timeline picture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.timeline import TurnTimeline

Speaker = Literal["user", "agent"]


@dataclass
class Segment:
    """A stretch of speech by one side. `text`: what was said (user: the transcript; agent:
    what was heard, cut at an interruption)."""

    who: Speaker
    start: float
    end: float
    text: str = ""
    interrupted: bool = False


@dataclass
class ToolRecord:
    """One tool call of a turn: name, how it ended, how long it took."""

    call_id: str
    name: str
    arguments: str
    outcome: str = "pending"  # ok, error, timeout, cancelled
    result: str = ""
    seconds: float | None = None
    spoken: bool = True  # False: the result arrived after an interruption and was not used


@dataclass
class TurnRecord:
    """One user turn and the agent's answer; its times are the marks of `timeline`."""

    index: int
    transcript: str = ""
    agent_text: str = ""  # everything the LLM produced
    heard_text: str = ""  # what the user heard
    interrupted: bool = False
    error: str | None = None
    timeline: TurnTimeline = field(default_factory=TurnTimeline)
    tools: list[ToolRecord] = field(default_factory=list)
    tts_context: str = ""  # the TTS stream's id on the wire (joins server-side timings)
    tts_connection: int | None = None  # the server's name for its socket, when it gives one
    cause: BaseException | None = field(default=None, repr=False, compare=False)  # of `error`

    def at(self, mark: str) -> float | None:
        """When ``mark`` happened in this turn (None: it did not)."""
        return self.timeline.at(mark)

    def latency_ms(self, name: str) -> float | None:
        """Latency ``name`` (see `agent.timeline.LATENCIES`) in milliseconds."""
        return self.timeline.latency(name)

    @property
    def durations_ms(self) -> dict[str, float]:
        return self.timeline.durations_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the texts, then the timeline's marks, latencies and durations."""
        return {
            "index": self.index,
            "transcript": self.transcript,
            "agent_text": self.agent_text,
            "heard_text": self.heard_text,
            "interrupted": self.interrupted,
            "error": self.error,
            "tts_context": self.tts_context,
            "tts_connection": self.tts_connection,
            **self.timeline.to_dict(),
            "tools": [asdict(tool) for tool in self.tools],
        }


@dataclass
class ConversationLog:
    """Segments and turns of a whole conversation, plus free-form notes (e.g. setup times)."""

    sample_rate: int
    segments: list[Segment] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "sample_rate": self.sample_rate,
            "segments": [asdict(s) for s in self.segments],
            "turns": [turn.to_dict() for turn in self.turns],
            "notes": self.notes,
        }
