"""The turn state machine: who has the floor, as a table (sans-I/O, after h11's `_state.py`).

It reads no clock and no socket: the session feeds it events and acts on the state it returns.

    IDLE --SessionStarted--> LISTENING --UserSpeechEnded--> THINKING --FirstAudio--> SPEAKING
    SPEAKING --PlaybackDone--> LISTENING
    THINKING/SPEAKING --BargeIn--> INTERRUPTED --InterruptHandled--> LISTENING
    THINKING/SPEAKING --TurnFailed--> LISTENING;  THINKING --TurnAbandoned--> LISTENING
    any --Reset--> IDLE

Speech onsets while the agent holds the floor are not `UserSpeechStarted`: the session decides
whether they are a `BargeIn` (or echo/noise to ignore).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "TRANSITIONS",
    "BargeIn",
    "FirstAudio",
    "FirstToken",
    "InterruptHandled",
    "InvalidTransition",
    "PlaybackDone",
    "Reset",
    "SessionStarted",
    "TranscriptReady",
    "TurnAbandoned",
    "TurnEvent",
    "TurnFailed",
    "TurnListener",
    "TurnState",
    "TurnStateMachine",
    "UserSpeechEnded",
    "UserSpeechStarted",
]


class TurnState(enum.Enum):
    """Who has the floor."""

    IDLE = "idle"  # no session yet (or after Reset)
    LISTENING = "listening"  # the user may speak
    THINKING = "thinking"  # the user's turn ended; waiting for STT, the LLM, the first audio
    SPEAKING = "speaking"  # the agent's audio is playing
    INTERRUPTED = "interrupted"  # barge-in: the reply is being cancelled and cleaned up


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """The session is up and listening."""


@dataclass(frozen=True, slots=True)
class UserSpeechStarted:
    """VAD heard the user start speaking (while listening)."""


@dataclass(frozen=True, slots=True)
class UserSpeechEnded:
    """End of the user's turn (enough trailing silence): the agent takes over."""


@dataclass(frozen=True, slots=True)
class TranscriptReady:
    """STT finished the user's utterance."""

    text: str


@dataclass(frozen=True, slots=True)
class FirstToken:
    """The LLM produced the reply's first text."""


@dataclass(frozen=True, slots=True)
class FirstAudio:
    """The reply's first audio reached the output: the agent is now speaking."""


@dataclass(frozen=True, slots=True)
class PlaybackDone:
    """The whole reply has been played."""


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The user spoke over the agent: cancel the reply."""


@dataclass(frozen=True, slots=True)
class InterruptHandled:
    """Barge-in cleanup finished (TTS context closed, queued audio dropped)."""


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """The reply failed (LLM/TTS error); give the floor back to the user."""

    reason: str


@dataclass(frozen=True, slots=True)
class TurnAbandoned:
    """Nothing to say (empty transcript, empty reply); give the floor back to the user."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reset:
    """The session ended or restarts."""


TurnEvent = (
    SessionStarted
    | UserSpeechStarted
    | UserSpeechEnded
    | TranscriptReady
    | FirstToken
    | FirstAudio
    | PlaybackDone
    | BargeIn
    | InterruptHandled
    | TurnFailed
    | TurnAbandoned
    | Reset
)

_S = TurnState

#: Every legal transition. Anything not here raises `InvalidTransition`.
TRANSITIONS: dict[tuple[TurnState, type[TurnEvent]], TurnState] = {
    (_S.IDLE, SessionStarted): _S.LISTENING,
    (_S.LISTENING, UserSpeechStarted): _S.LISTENING,
    (_S.LISTENING, UserSpeechEnded): _S.THINKING,
    (_S.THINKING, TranscriptReady): _S.THINKING,
    (_S.THINKING, FirstToken): _S.THINKING,
    (_S.THINKING, FirstAudio): _S.SPEAKING,
    (_S.THINKING, BargeIn): _S.INTERRUPTED,
    (_S.THINKING, TurnFailed): _S.LISTENING,
    (_S.THINKING, TurnAbandoned): _S.LISTENING,
    (_S.SPEAKING, PlaybackDone): _S.LISTENING,
    (_S.SPEAKING, BargeIn): _S.INTERRUPTED,
    (_S.SPEAKING, TurnFailed): _S.LISTENING,
    (_S.INTERRUPTED, InterruptHandled): _S.LISTENING,
    **{(state, Reset): _S.IDLE for state in TurnState},
}

#: Called after each transition with (old state, new state, event).
TurnListener = Callable[[TurnState, TurnState, TurnEvent], None]


class InvalidTransition(Exception):
    """An event arrived that the current state does not allow."""

    def __init__(self, state: TurnState, event: TurnEvent) -> None:
        allowed = sorted(kind.__name__ for (source, kind) in TRANSITIONS if source is state)
        super().__init__(
            f"{type(event).__name__} is not valid while {state.name}; "
            f"valid there: {', '.join(allowed)}"
        )
        self.state = state
        self.event = event


class TurnStateMachine:
    """Holds the current `TurnState` and applies events through `TRANSITIONS`.

    `turn` counts user turns: it increases each time the agent takes the floor
    (LISTENING -> THINKING). Listeners are called after every transition, self-loops included;
    a listener that raises propagates to the caller of `handle()` (the state has already
    changed).
    """

    __slots__ = ("_state", "listeners", "turn")

    def __init__(self, listeners: list[TurnListener] | None = None) -> None:
        self._state = TurnState.IDLE
        self.turn = 0
        self.listeners: list[TurnListener] = listeners if listeners is not None else []

    @property
    def state(self) -> TurnState:
        return self._state

    def can_handle(self, event: TurnEvent) -> bool:
        """Whether `event` is legal in the current state."""
        return (self._state, type(event)) in TRANSITIONS

    def handle(self, event: TurnEvent) -> TurnState:
        """Apply `event`; return the new state. Raises `InvalidTransition` if it is illegal."""
        old = self._state
        new = TRANSITIONS.get((old, type(event)))
        if new is None:
            raise InvalidTransition(old, event)
        if old is TurnState.LISTENING and new is TurnState.THINKING:
            self.turn += 1
        self._state = new
        for listener in self.listeners:
            listener(old, new, event)
        return new
