"""The turn state machine: events in, states out; no sockets, no sleeps."""

from __future__ import annotations

import itertools

import pytest

from agent.turn import (
    TRANSITIONS,
    BargeIn,
    FirstAudio,
    FirstToken,
    InterruptHandled,
    InvalidTransition,
    PlaybackDone,
    Reset,
    SessionStarted,
    TranscriptReady,
    TurnAbandoned,
    TurnEvent,
    TurnFailed,
    TurnState,
    TurnStateMachine,
    UserSpeechEnded,
    UserSpeechStarted,
)

S = TurnState

ONE_OF_EACH: list[TurnEvent] = [
    SessionStarted(),
    UserSpeechStarted(),
    UserSpeechEnded(),
    TranscriptReady("hi"),
    FirstToken(),
    FirstAudio(),
    PlaybackDone(),
    BargeIn(),
    InterruptHandled(),
    TurnFailed("llm down"),
    TurnAbandoned("empty transcript"),
    Reset(),
]

EXPECTED_LEGAL = {
    (S.IDLE, SessionStarted): S.LISTENING,
    (S.LISTENING, UserSpeechStarted): S.LISTENING,
    (S.LISTENING, UserSpeechEnded): S.THINKING,
    (S.THINKING, TranscriptReady): S.THINKING,
    (S.THINKING, FirstToken): S.THINKING,
    (S.THINKING, FirstAudio): S.SPEAKING,
    (S.THINKING, BargeIn): S.INTERRUPTED,
    (S.THINKING, TurnFailed): S.LISTENING,
    (S.THINKING, TurnAbandoned): S.LISTENING,
    (S.SPEAKING, PlaybackDone): S.LISTENING,
    (S.SPEAKING, BargeIn): S.INTERRUPTED,
    (S.SPEAKING, TurnFailed): S.LISTENING,
    (S.INTERRUPTED, InterruptHandled): S.LISTENING,
    (S.IDLE, Reset): S.IDLE,
    (S.LISTENING, Reset): S.IDLE,
    (S.THINKING, Reset): S.IDLE,
    (S.SPEAKING, Reset): S.IDLE,
    (S.INTERRUPTED, Reset): S.IDLE,
}


def machine_in(state: TurnState) -> TurnStateMachine:
    """A machine driven into `state` through legal events only."""
    path: dict[TurnState, list[TurnEvent]] = {
        S.IDLE: [],
        S.LISTENING: [SessionStarted()],
        S.THINKING: [SessionStarted(), UserSpeechEnded()],
        S.SPEAKING: [SessionStarted(), UserSpeechEnded(), FirstAudio()],
        S.INTERRUPTED: [SessionStarted(), UserSpeechEnded(), FirstAudio(), BargeIn()],
    }
    machine = TurnStateMachine()
    for event in path[state]:
        machine.handle(event)
    assert machine.state is state
    return machine


def test_the_table_is_exactly_the_designed_one() -> None:
    assert TRANSITIONS == EXPECTED_LEGAL
    assert {type(event) for event in ONE_OF_EACH} == {kind for _, kind in TRANSITIONS}


@pytest.mark.parametrize(
    ("state", "event"),
    [(state, event) for state, event in itertools.product(S, ONE_OF_EACH)],
    ids=lambda value: value.name if isinstance(value, TurnState) else type(value).__name__,
)
def test_every_state_event_pair(state: TurnState, event: TurnEvent) -> None:
    machine = machine_in(state)
    expected = EXPECTED_LEGAL.get((state, type(event)))
    assert machine.can_handle(event) is (expected is not None)
    if expected is None:
        with pytest.raises(InvalidTransition) as caught:
            machine.handle(event)
        assert machine.state is state  # an illegal event changes nothing
        assert caught.value.state is state and caught.value.event is event
        message = str(caught.value)
        assert type(event).__name__ in message and state.name in message
    else:
        assert machine.handle(event) is expected
        assert machine.state is expected


def test_invalid_transition_message_lists_what_is_allowed() -> None:
    machine = machine_in(S.LISTENING)
    with pytest.raises(InvalidTransition, match=r"PlaybackDone is not valid while LISTENING"):
        machine.handle(PlaybackDone())
    with pytest.raises(InvalidTransition, match=r"valid there: .*UserSpeechEnded"):
        machine.handle(BargeIn())


def test_a_full_conversation_with_a_barge_in() -> None:
    seen: list[tuple[TurnState, TurnState, str]] = []
    machine = TurnStateMachine([lambda old, new, ev: seen.append((old, new, type(ev).__name__))])
    script: list[tuple[TurnEvent, TurnState]] = [
        (SessionStarted(), S.LISTENING),
        (UserSpeechStarted(), S.LISTENING),
        (UserSpeechEnded(), S.THINKING),
        (TranscriptReady("what time is it"), S.THINKING),
        (FirstToken(), S.THINKING),
        (FirstAudio(), S.SPEAKING),
        (PlaybackDone(), S.LISTENING),
        (UserSpeechStarted(), S.LISTENING),
        (UserSpeechEnded(), S.THINKING),
        (FirstAudio(), S.SPEAKING),
        (BargeIn(), S.INTERRUPTED),
        (InterruptHandled(), S.LISTENING),
        (UserSpeechEnded(), S.THINKING),
        (TurnFailed("LLM timeout"), S.LISTENING),
        (Reset(), S.IDLE),
    ]
    for event, expected in script:
        assert machine.handle(event) is expected
    assert len(seen) == len(script)
    assert seen[5] == (S.THINKING, S.SPEAKING, "FirstAudio")
    assert seen[10] == (S.SPEAKING, S.INTERRUPTED, "BargeIn")
    assert machine.turn == 3


def test_turn_counter_counts_each_time_the_agent_takes_the_floor() -> None:
    machine = machine_in(S.LISTENING)
    assert machine.turn == 0
    machine.handle(UserSpeechEnded())
    machine.handle(TurnAbandoned("empty transcript"))
    machine.handle(UserSpeechEnded())
    assert machine.turn == 2


def test_listeners_are_not_called_for_illegal_events() -> None:
    calls: list[TurnState] = []
    machine = TurnStateMachine([lambda old, new, ev: calls.append(new)])
    with pytest.raises(InvalidTransition):
        machine.handle(FirstAudio())
    assert calls == []
    machine.handle(SessionStarted())
    assert calls == [S.LISTENING]


def test_events_are_immutable() -> None:
    event = TranscriptReady("hello")
    with pytest.raises(AttributeError):
        event.text = "changed"  # type: ignore[misc]
