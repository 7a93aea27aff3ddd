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

Thinking ahead (`think_ahead`): when the user pauses (`UserPaused`, the first short silence),
a *tentative* turn starts on the utterance so far with the output held, so its transcript,
tokens and even audio are ready when the turn really ends:

    LISTENING ──UserPaused──► PREPARING ──FirstAudio──► PREPARED     (hold the output; start)
    PREPARING / PREPARED ──SpeechEnded──► THINKING / SPEAKING        (commit it; let it play)
    PREPARING / PREPARED ──UserResumed──► WITHDRAWING                (cancel it; nothing heard)
    WITHDRAWING ──TurnEnded──► LISTENING                             (its number is reused)

Nothing of a tentative turn is played, said or recorded before `CommitTurn`.

An utterance that ends while a turn still holds the floor (barge-in off, or the user's next
sentence ending before the cancelled turn has cleaned up) is queued and starts when the floor
is free: one answer at a time, in order.
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

__all__ = [
    "Action",
    "BargeInRules",
    "CancelTurn",
    "ClearOutput",
    "CommitTurn",
    "Floor",
    "HangUp",
    "PauseOutput",
    "ResumeOutput",
    "Say",
    "SpeechConfirmed",
    "SpeechEnded",
    "StartTurn",
    "TurnAudioStarted",
    "TurnEnded",
    "TurnTaking",
    "TurnTakingEvent",
    "UserPaused",
    "UserResumed",
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
    PREPARING = "preparing"  # the user paused: a tentative turn runs, the output is held
    PREPARED = "prepared"  # ... and its first audio is ready, held
    WITHDRAWING = "withdrawing"  # the user went on: the tentative turn is being cancelled
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
class Say(Generic[U]):
    """The agent has something to say of its own (a greeting): answered like an utterance
    when the floor is free, queued otherwise (never committing a tentative turn)."""

    utterance: U


@dataclass(frozen=True, slots=True)
class UserPaused(Generic[U]):
    """The user paused (a short silence, not yet the end of the turn); ``utterance`` is what
    they said so far."""

    utterance: U


@dataclass(frozen=True, slots=True)
class UserResumed:
    """The user's voice came back after `UserPaused`: the same utterance goes on."""


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
    | Say[U]
    | UserPaused[U]
    | UserResumed
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
    """Drop everything queued for playout. ``held_only``: all of it came while the output was
    held (a tentative turn's answer, never let play), so an output that holds audio on its own
    side need not tell the far end, whose audio (an earlier answer's last words) plays on;
    a barge-in's clear is never held-only."""

    held_only: bool = False


@dataclass(frozen=True, slots=True)
class CancelTurn:
    """Cancel turn ``turn``. ``reason``: "barge-in" (with the voice's ``onset`` and the moment
    it was ``decided``), "hang-up", or "resumed" (a tentative turn withdrawn: the user went on)."""

    turn: int
    reason: str
    onset: float | None = None
    decided: float | None = None


@dataclass(frozen=True, slots=True)
class StartTurn(Generic[U]):
    """Answer ``utterance`` as turn ``turn`` (numbered from 1). ``tentative``: the user only
    paused; keep the turn's events and record until `CommitTurn` (the output is held)."""

    turn: int
    utterance: U
    tentative: bool = False


@dataclass(frozen=True, slots=True)
class CommitTurn(Generic[U]):
    """The tentative turn ``turn`` stands: the user's turn ended with ``utterance`` (the
    same speech, its end now decided)."""

    turn: int
    utterance: U


Action = PauseOutput | ResumeOutput | ClearOutput | CancelTurn | StartTurn[U] | CommitTurn[U]


# -- the table --------------------------------------------------------------------------------


class _Do(enum.Enum):
    """Steps of a table row, turned into `Action`s by `TurnTaking.feed`."""

    PAUSE = "pause"
    RESUME = "resume"
    CLEAR = "clear"
    DROP = "drop"  # clear what a tentative turn queued: held since it began, none of it played
    CANCEL = "cancel"  # cancel the running turn (barge-in)
    START = "start"  # start the event's utterance now
    QUEUE = "queue"  # queue the event's utterance behind the running turn
    NEXT = "next"  # the floor is free: start the first queued utterance, if any
    PREPARE = "prepare"  # start the event's utterance as a tentative turn
    COMMIT = "commit"  # the tentative turn stands
    WITHDRAW = "withdraw"  # cancel the tentative turn (the user went on)
    REUSE = "reuse"  # the withdrawn turn's number is free again


@dataclass(frozen=True)
class BargeInRules:
    """How the agent yields the floor. ``enabled=False``: never interrupted (utterances queue).
    ``pause_on_onset=False``: only confirmed speech acts (no pause on the first voiced frame)."""

    enabled: bool = True
    pause_on_onset: bool = True
    max_queued: int = 4  # utterances waiting for the floor; the oldest is dropped beyond this
    #: Start a tentative turn when the user pauses (`UserPaused`), committed when the turn
    #: ends, withdrawn if the user goes on (see the module doc).
    think_ahead: bool = True


_F = Floor
Row = tuple[Floor, tuple[_Do, ...]]
_NOTHING: tuple[_Do, ...] = ()


@functools.cache
def _shared_table(rules: BargeInRules) -> Mapping[tuple[Floor, type], Row]:
    """`build_table` once per set of rules, shared read-only by every conversation: a phone
    server with a hundred calls would otherwise hold a hundred copies (~250 objects each) for
    the garbage collector to walk."""
    return MappingProxyType(build_table(rules))


def build_table(rules: BargeInRules) -> dict[tuple[Floor, type], Row]:
    """Every rule of turn-taking for ``rules``: (floor, event type) -> (next floor, steps).
    An event with no row changes nothing (a stale or irrelevant event)."""
    table: dict[tuple[Floor, type], Row] = {
        (_F.LISTENING, SpeechEnded): (_F.THINKING, (_Do.START,)),
        (_F.LISTENING, Say): (_F.THINKING, (_Do.START,)),
        (_F.THINKING, TurnAudioStarted): (_F.SPEAKING, _NOTHING),
        (_F.PAUSED_THINKING, TurnAudioStarted): (_F.PAUSED_SPEAKING, _NOTHING),
    }
    busy_floors = (_F.THINKING, _F.SPEAKING, _F.PAUSED_THINKING, _F.PAUSED_SPEAKING)
    for busy in (*busy_floors, _F.INTERRUPTED, _F.WITHDRAWING):
        table[(busy, SpeechEnded)] = (busy, (_Do.QUEUE,))
    for busy in (*busy_floors, _F.INTERRUPTED, _F.WITHDRAWING, _F.PREPARING, _F.PREPARED):
        table[(busy, Say)] = (busy, (_Do.QUEUE,))
    if rules.think_ahead:
        table[(_F.LISTENING, UserPaused)] = (_F.PREPARING, (_Do.PAUSE, _Do.PREPARE))
        table[(_F.PREPARING, TurnAudioStarted)] = (_F.PREPARED, _NOTHING)
        table[(_F.PREPARING, SpeechEnded)] = (_F.THINKING, (_Do.COMMIT, _Do.RESUME))
        table[(_F.PREPARED, SpeechEnded)] = (_F.SPEAKING, (_Do.COMMIT, _Do.RESUME))
        for tentative in (_F.PREPARING, _F.PREPARED):
            table[(tentative, UserResumed)] = (_F.WITHDRAWING, (_Do.DROP, _Do.WITHDRAW))
            # It ended on its own (it failed, or understood nothing): the utterance will be
            # answered afresh when the turn really ends.
            table[(tentative, TurnEnded)] = (_F.LISTENING, (_Do.DROP, _Do.RESUME, _Do.REUSE))
        table[(_F.WITHDRAWING, TurnEnded)] = (
            _F.LISTENING,
            (_Do.DROP, _Do.RESUME, _Do.REUSE, _Do.NEXT),
        )
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


#: Floors where the output is held (paused) until the turn ends or commits.
_HELD = frozenset(
    {
        _F.PAUSED_THINKING,
        _F.PAUSED_SPEAKING,
        _F.INTERRUPTED,
        _F.PREPARING,
        _F.PREPARED,
        _F.WITHDRAWING,
    }
)
#: Floors where, from the outside, the user still has the floor (a tentative turn runs).
_USER_HOLDS = frozenset((_F.LISTENING, _F.PREPARING, _F.PREPARED, _F.WITHDRAWING))


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
        self.table = _shared_table(self.rules)
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
        if self.floor in _USER_HOLDS and self.user is UserState.SPEAKING:
            return "user speaking"
        if self.floor in (Floor.PAUSED_THINKING, Floor.PAUSED_SPEAKING):
            return "paused"
        if self.floor in _USER_HOLDS:  # a tentative turn is not the agent's floor yet
            return "listening"
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

    @property
    def tentative(self) -> bool:
        """The running turn is tentative (the user paused; not committed yet)."""
        return self.floor in (Floor.PREPARING, Floor.PREPARED, Floor.WITHDRAWING)

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
        if step is _Do.DROP:
            return [ClearOutput(held_only=True)]
        if step is _Do.CANCEL:
            assert self.turn is not None and isinstance(event, SpeechConfirmed)
            self.barge_ins += 1
            return [CancelTurn(self.turn, "barge-in", onset=event.onset, decided=now)]
        if step is _Do.START:
            assert isinstance(event, SpeechEnded | Say)
            return [self._start(event.utterance)]
        if step is _Do.PREPARE:
            assert isinstance(event, UserPaused)
            return [self._start(event.utterance, tentative=True)]
        if step is _Do.COMMIT:
            assert isinstance(event, SpeechEnded) and self.turn is not None
            return [CommitTurn(self.turn, event.utterance)]
        if step is _Do.WITHDRAW:
            assert self.turn is not None
            return [CancelTurn(self.turn, "resumed")]
        if step is _Do.REUSE:
            self.turn = None
            self.turns_started -= 1
            return []
        if step is _Do.QUEUE:
            assert isinstance(event, SpeechEnded | Say)
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

    def _start(self, utterance: U, *, tentative: bool = False) -> StartTurn[U]:
        self.turns_started += 1
        self.turn = self.turns_started
        return StartTurn(self.turn, utterance, tentative)

    def _hang_up(self) -> list[Action[U]]:
        self.queued.clear()
        running, self.turn = self.turn, None
        was_held = self.floor in _HELD
        tentative = self.floor in (Floor.PREPARING, Floor.PREPARED, Floor.WITHDRAWING)
        already_cancelled = self.floor in (Floor.INTERRUPTED, Floor.WITHDRAWING)
        self.floor = Floor.ENDED
        actions: list[Action[U]] = []
        if running is not None and not already_cancelled:
            actions.append(CancelTurn(running, "hang-up"))
        if was_held:
            actions.append(ClearOutput(held_only=tentative))
        return actions
