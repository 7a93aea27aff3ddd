"""What a conversation tells its user, as typed events (read them with ``async for``).

Every event carries ``t``, the time on the conversation's clock, and most the ``turn`` it
belongs to (user turns are numbered from 1). The stream of a conversation, in order:

    StateChanged("user speaking") → UserSaid → StateChanged("thinking") → AgentText ... →
    StateChanged("speaking") → [Interrupted] → AgentSaid → TurnFinished → StateChanged("listening")

Tool calls appear as `ToolCalled` / `ToolFinished`; `Dtmf` on phone lines; `ErrorEvent` when a
turn fails (the conversation goes on) or the conversation ends on an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.conversation import TurnRecord

__all__ = [
    "AgentSaid",
    "AgentText",
    "Dtmf",
    "ErrorEvent",
    "Event",
    "Interrupted",
    "StateChanged",
    "ToolCalled",
    "ToolFinished",
    "TurnFinished",
    "UserSaid",
]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The floor changed hands: listening, user speaking, thinking, speaking, paused,
    interrupted, ended."""

    state: str
    t: float


@dataclass(frozen=True, slots=True)
class UserSaid:
    """The user's utterance, transcribed."""

    turn: int
    text: str
    t: float


@dataclass(frozen=True, slots=True)
class AgentText:
    """Text of the answer as it goes to the TTS (spoken soon, not yet heard)."""

    turn: int
    text: str
    t: float


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The user spoke over the agent and the answer was cancelled."""

    turn: int
    onset: float  # when the user's voice began
    t: float  # when the controller decided


@dataclass(frozen=True, slots=True)
class AgentSaid:
    """The answer as it ended: ``heard`` is what the user actually heard (all of ``text``
    unless ``interrupted``); the history keeps ``heard``."""

    turn: int
    text: str
    heard: str
    interrupted: bool
    t: float


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The model called a tool."""

    turn: int
    call_id: str
    name: str
    arguments: str
    t: float


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A tool call ended: ``outcome`` is "ok", "error", "timeout" or "cancelled"."""

    turn: int
    call_id: str
    name: str
    outcome: str
    result: str
    seconds: float
    t: float


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed on a phone line."""

    digit: str
    t: float


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Something failed; ``message`` names the cause and the fix. ``turn`` is None when the
    conversation itself ends on it (a device lost)."""

    turn: int | None
    message: str
    t: float


@dataclass(frozen=True, slots=True)
class TurnFinished:
    """A turn is over: its whole record, with its timeline and latencies."""

    record: TurnRecord
    t: float

    @property
    def turn(self) -> int:
        return self.record.index


Event = (
    StateChanged
    | UserSaid
    | AgentText
    | Interrupted
    | AgentSaid
    | ToolCalled
    | ToolFinished
    | Dtmf
    | ErrorEvent
    | TurnFinished
)
