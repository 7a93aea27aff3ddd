"""What happened in a conversation, on one clock: the record the demo's reports are made from.

All times are seconds on the transport's stream clock (sample count / rate), so user audio,
agent audio and events line up exactly in `conversation.wav` and the timeline picture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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
class TurnRecord:
    """One user turn and the agent's answer. Times are stream seconds (None: did not happen)."""

    index: int
    user_speech_start: float | None = None
    user_speech_end: float | None = None
    transcript: str = ""
    transcript_ready: float | None = None
    first_token: float | None = None
    first_audio_byte: float | None = None
    first_audio_played: float | None = None
    agent_audio_end: float | None = None
    agent_text: str = ""  # everything the LLM produced
    heard_text: str = ""  # what the user heard
    interrupted: bool = False
    barge_in_onset: float | None = None  # user's voice began (first voiced frame)
    barge_in_decided: float | None = None  # the controller confirmed and cancelled
    output_silent: float | None = None  # the first output block with no agent audio after it
    error: str | None = None
    durations_ms: dict[str, float | None] = field(default_factory=dict)

    def latency(self, start: float | None, end: float | None) -> float | None:
        """Milliseconds from ``start`` to ``end``, when both happened."""
        if start is None or end is None:
            return None
        return (end - start) * 1000

    @property
    def voice_to_voice_ms(self) -> float | None:
        """User stopped speaking -> agent's first audio played."""
        return self.latency(self.user_speech_end, self.first_audio_played)

    @property
    def barge_in_reaction_ms(self) -> float | None:
        """User's voice began -> agent output silent."""
        return self.latency(self.barge_in_onset, self.output_silent)


@dataclass
class ConversationLog:
    """Segments and turns of a whole conversation, plus free-form notes (e.g. setup times)."""

    sample_rate: int
    segments: list[Segment] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (derived latencies included per turn)."""
        turns = []
        for turn in self.turns:
            item = asdict(turn)
            item["voice_to_voice_ms"] = turn.voice_to_voice_ms
            item["barge_in_reaction_ms"] = turn.barge_in_reaction_ms
            turns.append(item)
        return {
            "sample_rate": self.sample_rate,
            "segments": [asdict(s) for s in self.segments],
            "turns": turns,
            "notes": self.notes,
        }
