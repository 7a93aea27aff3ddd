"""Turn-taking as one sans-I/O state machine: who has the floor, and what to do when the user
speaks (after h11's `_state.py`: every rule in one table that the product runs).

The voice loop feeds it events — what VAD heard, what the running turn did — with the time on
the conversation's clock, and executes the actions it returns. It reads no clock, no socket and
no audio, so every barge-in rule is tested as a table: events in, actions out.

    LISTENING ──SpeechEnded──► THINKING ──FirstAudio──► SPEAKING ──TurnEnded──► LISTENING
    THINKING / SPEAKING ──VoiceOnset──► PAUSED_*        (pause the output at once; keep the queue)
    PAUSED_* ──VoiceLost──► THINKING / SPEAKING           (a false alarm: resume where it paused)
    THINKING / SPEAKING / PAUSED_* ──SpeechConfirmed──► INTERRUPTED   (clear, cancel the turn)
    INTERRUPTED ──TurnEnded──► LISTENING                  (cleanup done: resume the empty output)
    any ──HangUp──► ENDED

An utterance that ends while a turn still holds the floor (barge-in off, or the user's next
sentence ending before the cancelled turn has cleaned up) is queued and starts when the floor
is free: one answer at a time, in order.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "Action",
    "BargeInRules",
    "CancelTurn",
    "ClearOutput",
    "Floor",
    "HangUp",
    "PauseOutput",
    "ResumeOutput",
    "SpeechConfirmed",
    "SpeechEnded",
    "StartTurn",
    "TurnAudioStarted",
    "TurnEnded",
    "TurnTaking",
    "TurnTakingEvent",
    "VoiceLost",
    "VoiceOnset",
]

U = TypeVar("U")  # what an utterance is to the caller (the VAD's audio); opaque here


class Floor(enum.Enum):
    """Who holds the floor, and how."""

    LISTENING = "listening"  # no turn running: the user may speak
    THINKING = "thinking"  # a turn is running (STT, LLM), nothing audible yet
    SPEAKING = "speaking"  # the turn's audio is playing
    PAUSED_THINKING = "paused thinking"  # voice over a thinking turn: output held, turn goes on
    PAUSED_SPEAKING = "paused speaking"  # voice over the agent: output held, turn goes on
    INTERRUPTED = "interrupted"  # barge-in: the turn is being cancelled and cleaned up
    ENDED = "ended"  # the conversation is over

    @property
    def agent_holds(self) -> bool:
        """A turn is running (thinking, speaking, paused, or being cancelled)."""
        return self not in (Floor.LISTENING, Floor.ENDED)


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoiceOnset:
    """The first voiced frame of a possible utterance (not yet confirmed)."""


@dataclass(frozen=True, slots=True)
class VoiceLost:
    """The onset was not confirmed (a cough, a click): a false alarm."""


@dataclass(frozen=True, slots=True)
class SpeechConfirmed:
    """Enough voice to be speech. ``onset``: when the voice began, on the conversation clock."""

    onset: float


@dataclass(frozen=True, slots=True)
class SpeechEnded(Generic[U]):
    """The user's turn ended (enough trailing silence); ``utterance`` is what to answer."""

    utterance: U


@dataclass(frozen=True, slots=True)
class TurnAudioStarted:
    """Turn ``turn``'s first audio reached the output."""

    turn: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """Turn ``turn`` is over and cleaned up (played, failed, abandoned or cancelled)."""

    turn: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """The conversation ends (the microphone ended, the caller hung up, the agent ended it)."""


TurnTakingEvent = (
    VoiceOnset
    | VoiceLost
    | SpeechConfirmed
    | SpeechEnded[U]
    | TurnAudioStarted
    | TurnEnded
    | HangUp
)

# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PauseOutput:
    """Stop playout now and keep what is queued (nothing is lost or counted as heard)."""


@dataclass(frozen=True, slots=True)
class ResumeOutput:
    """Play on from where playout paused."""


@dataclass(frozen=True, slots=True)
class ClearOutput:
    """Drop everything queued for playout."""


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Cancel turn ``turn``. ``reason``: "barge-in" (with the voice's ``onset`` and the moment
    it was ``decided``) or "hang-up"."""

    turn: int
    reason: str
    onset: float | None = None
    decided: float | None = None


@dataclass(frozen=True, slots=True)
class StartTurn(Generic[U]):
    """Answer ``utterance`` as turn ``turn`` (numbered from 1)."""

    turn: int
    utterance: U


Action = PauseOutput | ResumeOutput | ClearOutput | CancelTurn | StartTurn[U]


# -- the table --------------------------------------------------------------------------------


class _Do(enum.Enum):
    """Steps of a table row, turned into `Action`s by `TurnTaking.feed`."""

    PAUSE = "pause"
    RESUME = "resume"
    CLEAR = "clear"
    CANCEL = "cancel"  # cancel the running turn (barge-in)
    START = "start"  # start the event's utterance now
    QUEUE = "queue"  # queue the event's utterance behind the running turn
    NEXT = "next"  # the floor is free: start the first queued utterance, if any


@dataclass(frozen=True)
class BargeInRules:
    """How the agent yields the floor. ``enabled=False``: never interrupted (utterances queue).
    ``pause_on_onset=False``: only confirmed speech acts (no pause on the first voiced frame)."""

    enabled: bool = True
    pause_on_onset: bool = True
    max_queued: int = 4  # utterances waiting for the floor; the oldest is dropped beyond this


_F = Floor
Row = tuple[Floor, tuple[_Do, ...]]
_NOTHING: tuple[_Do, ...] = ()


def build_table(rules: BargeInRules) -> dict[tuple[Floor, type], Row]:
    """Every rule of turn-taking for ``rules``: (floor, event type) -> (next floor, steps).
    An event with no row changes nothing (a stale or irrelevant event)."""
    table: dict[tuple[Floor, type], Row] = {
        (_F.LISTENING, SpeechEnded): (_F.THINKING, (_Do.START,)),
        (_F.THINKING, TurnAudioStarted): (_F.SPEAKING, _NOTHING),
        (_F.PAUSED_THINKING, TurnAudioStarted): (_F.PAUSED_SPEAKING, _NOTHING),
    }
    for busy in (_F.THINKING, _F.SPEAKING, _F.PAUSED_THINKING, _F.PAUSED_SPEAKING, _F.INTERRUPTED):
        table[(busy, SpeechEnded)] = (busy, (_Do.QUEUE,))
    for running in (_F.THINKING, _F.SPEAKING):
        table[(running, TurnEnded)] = (_F.LISTENING, (_Do.NEXT,))
    for held in (_F.PAUSED_THINKING, _F.PAUSED_SPEAKING, _F.INTERRUPTED):
        # The output was held: drop what slipped in before the cancel landed, then un-pause.
        table[(held, TurnEnded)] = (_F.LISTENING, (_Do.CLEAR, _Do.RESUME, _Do.NEXT))
    if rules.enabled:
        for running, paused in (
            (_F.THINKING, _F.PAUSED_THINKING),
            (_F.SPEAKING, _F.PAUSED_SPEAKING),
        ):
            if rules.pause_on_onset:
                table[(running, VoiceOnset)] = (paused, (_Do.PAUSE,))
            table[(paused, VoiceLost)] = (running, (_Do.RESUME,))
            table[(running, SpeechConfirmed)] = (_F.INTERRUPTED, (_Do.PAUSE, _Do.CLEAR, _Do.CANCEL))
            table[(paused, SpeechConfirmed)] = (_F.INTERRUPTED, (_Do.CLEAR, _Do.CANCEL))
    return table


class UserState(enum.Enum):
    """What VAD last said about the user."""

    SILENT = "silent"
    ONSET = "onset"  # voiced frames, not yet confirmed
    SPEAKING = "speaking"


class TurnTaking(Generic[U]):
    """The floor, the running turn and the queue; `feed(event, now)` returns the actions.

    `turn` is the running turn's number (None when the floor is free). `barge_ins` counts
    cancelled turns, `pauses` the onsets that paused the output (false alarms included).
    """

    def __init__(self, rules: BargeInRules | None = None) -> None:
        self.rules = rules or BargeInRules()
        self.table = build_table(self.rules)
        self.floor = Floor.LISTENING
        self.user = UserState.SILENT
        self.turn: int | None = None
        self.turns_started = 0
        self.queued: deque[U] = deque()
        self.barge_ins = 0
        self.pauses = 0
        self.dropped = 0  # utterances dropped from a full queue

    @property
    def state(self) -> str:
        """One word for a status line: listening, user speaking, thinking, speaking, paused,
        interrupted, ended."""
        if self.floor is Floor.LISTENING and self.user is UserState.SPEAKING:
            return "user speaking"
        if self.floor in (Floor.PAUSED_THINKING, Floor.PAUSED_SPEAKING):
            return "paused"
        return str(self.floor.value)

    def feed(self, event: TurnTakingEvent[U], now: float) -> list[Action[U]]:
        """Apply ``event`` (which happened at ``now``) and return what to do, in order."""
        self._track_user(event)
        if isinstance(event, HangUp):
            return self._hang_up()
        if isinstance(event, TurnAudioStarted | TurnEnded) and event.turn != self.turn:
            return []  # about a turn that is no longer the running one
        row = self.table.get((self.floor, type(event)))
        if row is None:
            return []
        self.floor, steps = row
        actions: list[Action[U]] = []
        for step in steps:
            actions.extend(self._step(step, event, now))
        return actions

    def _track_user(self, event: TurnTakingEvent[U]) -> None:
        if isinstance(event, VoiceOnset) and self.user is UserState.SILENT:
            self.user = UserState.ONSET
        elif isinstance(event, VoiceLost | SpeechEnded):
            self.user = UserState.SILENT
        elif isinstance(event, SpeechConfirmed):
            self.user = UserState.SPEAKING

    def _step(self, step: _Do, event: TurnTakingEvent[U], now: float) -> list[Action[U]]:
        if step is _Do.PAUSE:
            self.pauses += isinstance(event, VoiceOnset)
            return [PauseOutput()]
        if step is _Do.RESUME:
            return [ResumeOutput()]
        if step is _Do.CLEAR:
            return [ClearOutput()]
        if step is _Do.CANCEL:
            assert self.turn is not None and isinstance(event, SpeechConfirmed)
            self.barge_ins += 1
            return [CancelTurn(self.turn, "barge-in", onset=event.onset, decided=now)]
        if step is _Do.START:
            assert isinstance(event, SpeechEnded)
            return [self._start(event.utterance)]
        if step is _Do.QUEUE:
            assert isinstance(event, SpeechEnded)
            self.queued.append(event.utterance)
            if len(self.queued) > self.rules.max_queued:
                self.queued.popleft()
                self.dropped += 1
            return []
        # NEXT: the turn is over; the floor is free for the first queued utterance.
        self.turn = None
        if self.queued:
            self.floor = Floor.THINKING
            return [self._start(self.queued.popleft())]
        return []

    def _start(self, utterance: U) -> StartTurn[U]:
        self.turns_started += 1
        self.turn = self.turns_started
        return StartTurn(self.turn, utterance)

    def _hang_up(self) -> list[Action[U]]:
        self.queued.clear()
        running, self.turn = self.turn, None
        was_held = self.floor in (Floor.PAUSED_THINKING, Floor.PAUSED_SPEAKING, Floor.INTERRUPTED)
        already_cancelled = self.floor is Floor.INTERRUPTED
        self.floor = Floor.ENDED
        actions: list[Action[U]] = []
        if running is not None and not already_cancelled:
            actions.append(CancelTurn(running, "hang-up"))
        if was_held:
            actions.append(ClearOutput())
        return actions
