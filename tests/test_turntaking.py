"""Turn-taking and barge-in as tables: events in, actions out; no sockets, no sleeps."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent.turntaking import (
    Action,
    BargeInRules,
    CancelTurn,
    ClearOutput,
    CommitTurn,
    Floor,
    HangUp,
    PauseOutput,
    ResumeOutput,
    SpeechConfirmed,
    SpeechEnded,
    StartTurn,
    TurnAudioStarted,
    TurnEnded,
    TurnTaking,
    TurnTakingEvent,
    UserPaused,
    UserResumed,
    VoiceLost,
    VoiceOnset,
)

Step = tuple[TurnTakingEvent[str], list[Action[str]], str]


def run(steps: Sequence[Step], rules: BargeInRules | None = None) -> TurnTaking[str]:
    """Feed each event at t = its index; check the actions and the state after it."""
    machine: TurnTaking[str] = TurnTaking(rules)
    for t, (event, actions, state) in enumerate(steps):
        got = machine.feed(event, float(t))
        assert (got, machine.state) == (actions, state), f"step {t}: {event}"
    return machine


def test_a_plain_turn() -> None:
    run(
        [
            (VoiceOnset(), [], "listening"),
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (SpeechEnded("hello"), [StartTurn(1, "hello")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (TurnEnded(1), [], "listening"),
        ]
    )


def test_onset_pauses_and_a_false_alarm_resumes_where_it_paused() -> None:
    machine = run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (VoiceLost(), [ResumeOutput()], "speaking"),
            (TurnEnded(1), [], "listening"),
        ]
    )
    assert (machine.pauses, machine.barge_ins) == (1, 0)


def test_confirmed_speech_over_the_agent_cancels_and_clears() -> None:
    machine = run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (
                SpeechConfirmed(onset=2.0),
                [ClearOutput(), CancelTurn(1, "barge-in", onset=2.0, decided=3.0)],
                "interrupted",
            ),
            (TurnEnded(1), [ClearOutput(), ResumeOutput()], "user speaking"),
        ]
    )
    assert machine.barge_ins == 1


def test_onset_before_the_first_audio_byte() -> None:
    run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (TurnAudioStarted(1), [], "paused"),  # audio queues behind the pause, unheard
            (VoiceLost(), [ResumeOutput()], "speaking"),
        ]
    )
    run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (
                SpeechConfirmed(onset=1.0),
                [ClearOutput(), CancelTurn(1, "barge-in", onset=1.0, decided=2.0)],
                "interrupted",
            ),
            (TurnAudioStarted(1), [], "interrupted"),  # late audio of the cancelled turn
        ]
    )


def test_onset_between_the_flush_and_the_final() -> None:
    """The turn is still running (its audio plays out): barge-in applies as while speaking."""
    run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (
                SpeechConfirmed(onset=2.0),
                [ClearOutput(), CancelTurn(1, "barge-in", onset=2.0, decided=3.0)],
                "interrupted",
            ),
        ]
    )


def test_rapid_onsets_pause_and_resume_each_time_and_cancel_once() -> None:
    steps: list[Step] = [
        (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
        (TurnAudioStarted(1), [], "speaking"),
    ]
    for _ in range(5):
        steps += [
            (VoiceOnset(), [PauseOutput()], "paused"),
            (VoiceLost(), [ResumeOutput()], "speaking"),
        ]
    steps += [
        (VoiceOnset(), [PauseOutput()], "paused"),
        (
            SpeechConfirmed(onset=12.0),
            [ClearOutput(), CancelTurn(1, "barge-in", onset=12.0, decided=13.0)],
            "interrupted",
        ),
        (VoiceOnset(), [], "interrupted"),
        (SpeechConfirmed(onset=15.0), [], "interrupted"),
    ]
    machine = run(steps)
    assert (machine.pauses, machine.barge_ins) == (6, 1)


def test_the_turn_ending_while_paused_clears_and_unpauses() -> None:
    """An empty transcript or a failure ends the turn during an onset: nothing of it may play
    later, and the output must not stay paused."""
    machine = run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (TurnEnded(1), [ClearOutput(), ResumeOutput()], "listening"),
            (SpeechConfirmed(onset=2.0), [], "user speaking"),  # no turn left to cancel
            (SpeechEnded("next"), [StartTurn(2, "next")], "thinking"),
        ]
    )
    assert machine.barge_ins == 0


def test_the_next_turn_queued_behind_a_cancelled_one_starts_after_its_cleanup() -> None:
    run(
        [
            (SpeechEnded("first"), [StartTurn(1, "first")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [PauseOutput()], "paused"),
            (
                SpeechConfirmed(onset=2.0),
                [ClearOutput(), CancelTurn(1, "barge-in", onset=2.0, decided=3.0)],
                "interrupted",
            ),
            (SpeechEnded("second"), [], "interrupted"),  # cleanup still running: queued
            (TurnEnded(1), [ClearOutput(), ResumeOutput(), StartTurn(2, "second")], "thinking"),
            (TurnAudioStarted(2), [], "speaking"),
        ]
    )


def test_stale_reports_of_an_old_turn_change_nothing() -> None:
    run(
        [
            (SpeechEnded("a"), [StartTurn(1, "a")], "thinking"),
            (TurnEnded(1), [], "listening"),
            (SpeechEnded("b"), [StartTurn(2, "b")], "thinking"),
            (TurnAudioStarted(1), [], "thinking"),
            (TurnEnded(1), [], "thinking"),
            (TurnEnded(2), [], "listening"),
        ]
    )


def test_barge_in_off_queues_utterances_in_order() -> None:
    run(
        [
            (SpeechEnded("a"), [StartTurn(1, "a")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [], "speaking"),
            (SpeechConfirmed(onset=3.0), [], "speaking"),
            (SpeechEnded("b"), [], "speaking"),
            (SpeechEnded("c"), [], "speaking"),
            (TurnEnded(1), [StartTurn(2, "b")], "thinking"),
            (TurnEnded(2), [StartTurn(3, "c")], "thinking"),
            (TurnEnded(3), [], "listening"),
        ],
        BargeInRules(enabled=False),
    )


def test_without_pause_on_onset_only_confirmed_speech_acts() -> None:
    run(
        [
            (SpeechEnded("a"), [StartTurn(1, "a")], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
            (VoiceOnset(), [], "speaking"),
            (VoiceLost(), [], "speaking"),
            (
                SpeechConfirmed(onset=3.0),
                [PauseOutput(), ClearOutput(), CancelTurn(1, "barge-in", onset=3.0, decided=4.0)],
                "interrupted",
            ),
        ],
        BargeInRules(pause_on_onset=False),
    )


def test_a_full_queue_drops_the_oldest() -> None:
    machine = run(
        [(SpeechEnded("a"), [StartTurn(1, "a")], "thinking")]
        + [(SpeechEnded(str(i)), [], "thinking") for i in range(3)],
        BargeInRules(enabled=False, max_queued=2),
    )
    assert list(machine.queued) == ["1", "2"] and machine.dropped == 1


@pytest.mark.parametrize(
    ("before", "actions"),
    [
        ([], []),
        ([SpeechEnded("a")], [CancelTurn(1, "hang-up")]),
        (
            [SpeechEnded("a"), TurnAudioStarted(1), VoiceOnset()],
            [CancelTurn(1, "hang-up"), ClearOutput()],
        ),
        ([SpeechEnded("a"), SpeechConfirmed(onset=0.0)], [ClearOutput()]),  # already cancelled
    ],
)
def test_hang_up_cancels_what_runs_and_ends_the_conversation(
    before: list[TurnTakingEvent[str]], actions: list[Action[str]]
) -> None:
    machine: TurnTaking[str] = TurnTaking()
    for event in before:
        machine.feed(event, 0.0)
    assert machine.feed(HangUp(), 1.0) == actions
    assert machine.floor is Floor.ENDED and machine.turn is None
    assert machine.feed(SpeechEnded("late"), 2.0) == []
    assert machine.feed(VoiceOnset(), 2.0) == []


def test_every_row_leads_to_a_real_floor_and_the_table_is_small() -> None:
    """The table is the whole rule set: each row names a floor and known steps."""
    machine: TurnTaking[str] = TurnTaking()
    assert 15 <= len(machine.table) <= 40
    for (floor, _event), (nxt, _steps) in machine.table.items():
        assert floor is not Floor.ENDED and isinstance(nxt, Floor)


def test_conversations_with_the_same_rules_share_one_read_only_table() -> None:
    """A hundred calls hold one table, not a hundred (the garbage collector walks each)."""
    a: TurnTaking[str] = TurnTaking()
    b: TurnTaking[str] = TurnTaking()
    quiet: TurnTaking[str] = TurnTaking(BargeInRules(enabled=False))
    assert a.table is b.table and quiet.table is not a.table
    with pytest.raises(TypeError):
        a.table[(Floor.LISTENING, HangUp)] = (Floor.ENDED, ())  # type: ignore[index]


# -- thinking ahead: a tentative turn at the user's first pause ------------------------------


def test_a_pause_starts_a_tentative_turn_that_the_end_of_turn_commits() -> None:
    machine = run(
        [
            (VoiceOnset(), [], "listening"),
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (
                UserPaused("what time"),
                [PauseOutput(), StartTurn(1, "what time", True)],
                "user speaking",
            ),
            (TurnAudioStarted(1), [], "user speaking"),  # ready, held: nothing audible yet
            (SpeechEnded("what time"), [CommitTurn(1, "what time"), ResumeOutput()], "speaking"),
            (TurnEnded(1), [], "listening"),
        ]
    )
    assert machine.turns_started == 1 and not machine.tentative


def test_a_commit_before_any_audio_is_thinking() -> None:
    run(
        [
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (UserPaused("q"), [PauseOutput(), StartTurn(1, "q", True)], "user speaking"),
            (SpeechEnded("q"), [CommitTurn(1, "q"), ResumeOutput()], "thinking"),
            (TurnAudioStarted(1), [], "speaking"),
        ]
    )


#: A tentative turn's audio was held from its start: dropping it need not reach the far end.
DROP = ClearOutput(held_only=True)


def test_the_user_going_on_withdraws_it_and_its_number_is_reused() -> None:
    machine = run(
        [
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (
                UserPaused("I'd like"),
                [PauseOutput(), StartTurn(1, "I'd like", True)],
                "user speaking",
            ),
            (TurnAudioStarted(1), [], "user speaking"),
            (UserResumed(), [DROP, CancelTurn(1, "resumed")], "user speaking"),
            (UserPaused("ignored while it cleans up"), [], "user speaking"),
            (TurnEnded(1), [DROP, ResumeOutput()], "user speaking"),
            (
                UserPaused("I'd like a table"),
                [PauseOutput(), StartTurn(1, "I'd like a table", True)],
                "user speaking",
            ),
            (
                SpeechEnded("I'd like a table"),
                [CommitTurn(1, "I'd like a table"), ResumeOutput()],
                "thinking",
            ),
        ]
    )
    assert machine.turns_started == 1 and machine.barge_ins == 0


def test_the_turn_ending_while_the_withdrawn_one_cleans_up_is_queued() -> None:
    run(
        [
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (UserPaused("a"), [PauseOutput(), StartTurn(1, "a", True)], "user speaking"),
            (UserResumed(), [DROP, CancelTurn(1, "resumed")], "user speaking"),
            (SpeechEnded("a b"), [], "listening"),
            (TurnEnded(1), [DROP, ResumeOutput(), StartTurn(1, "a b")], "thinking"),
        ]
    )


def test_a_tentative_turn_that_ends_by_itself_leaves_the_utterance_to_a_fresh_turn() -> None:
    run(
        [
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (UserPaused("hm"), [PauseOutput(), StartTurn(1, "hm", True)], "user speaking"),
            (TurnEnded(1), [DROP, ResumeOutput()], "user speaking"),
            (SpeechEnded("hm"), [StartTurn(1, "hm")], "thinking"),
        ]
    )


def test_stale_events_of_a_withdrawn_turn_change_nothing() -> None:
    run(
        [
            (UserPaused("a"), [PauseOutput(), StartTurn(1, "a", True)], "listening"),
            (UserResumed(), [DROP, CancelTurn(1, "resumed")], "listening"),
            (TurnEnded(1), [DROP, ResumeOutput()], "listening"),
            (TurnAudioStarted(1), [], "listening"),
            (TurnEnded(1), [], "listening"),
            (UserResumed(), [], "listening"),
        ]
    )


def test_hanging_up_cancels_a_tentative_turn_and_clears_the_held_output() -> None:
    run(
        [
            (UserPaused("a"), [PauseOutput(), StartTurn(1, "a", True)], "listening"),
            (HangUp(), [CancelTurn(1, "hang-up"), DROP], "ended"),
        ]
    )


def test_a_pause_while_the_agent_holds_the_floor_prepares_nothing() -> None:
    run(
        [
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
            (UserPaused("r"), [], "thinking"),
            (UserResumed(), [], "thinking"),
        ],
        BargeInRules(enabled=False),
    )


def test_without_think_ahead_a_pause_is_ignored() -> None:
    run(
        [
            (SpeechConfirmed(onset=0.0), [], "user speaking"),
            (UserPaused("q"), [], "user speaking"),
            (SpeechEnded("q"), [StartTurn(1, "q")], "thinking"),
        ],
        BargeInRules(think_ahead=False),
    )
