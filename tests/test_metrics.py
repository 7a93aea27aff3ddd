"""TurnMetrics: durations, the summary line and the JSON record from known timestamps."""

from __future__ import annotations

import json

import pytest

from agent.metrics import MARKS, TurnMetrics


def sample() -> TurnMetrics:
    metrics = TurnMetrics(turn=2)
    t = 1000.0
    for name, offset in [
        ("user_speech_end", 0.0), ("transcript_ready", 0.15), ("llm_request", 0.16),
        ("first_token", 0.472), ("first_text_sent", 0.473), ("first_audio_byte", 0.613),
        ("first_audio_played", 0.62), ("last_token", 1.0), ("flush_sent", 1.0002),
        ("turn_end", 2.31),
    ]:
        metrics.mark(name, t + offset)
    return metrics


def test_durations_are_differences_of_the_marks() -> None:
    metrics = sample()
    assert metrics.ttft == pytest.approx(0.312)
    assert metrics.text_to_socket == pytest.approx(0.001)
    assert metrics.ttfb == pytest.approx(0.140)
    assert metrics.voice_to_voice == pytest.approx(0.620)
    assert metrics.last_token_to_flush == pytest.approx(0.0002)
    assert metrics.total == pytest.approx(2.31)
    assert metrics.barge_in_stop is None and not metrics.interrupted


def test_summary_line_reads_like_the_design() -> None:
    assert sample().summary_line() == (
        "turn 2: stt 150 ms · ttft 312 ms · text→socket 1.0 ms · ttfb 140 ms · "
        "voice→voice 620 ms · flush +0.2 ms · total 2.31 s"
    )


def test_summary_leaves_out_what_was_not_measured_and_shows_interruptions() -> None:
    metrics = TurnMetrics(turn=1, llm_request=5.0, first_token=5.3, barge_in=6.0,
                          interrupted_at=6.04)
    assert metrics.summary_line() == "turn 1: ttft 300 ms · interrupted (stopped in 40 ms)"
    assert TurnMetrics(turn=3).summary_line() == "turn 3: no measurements"


def test_mark_first_keeps_the_first_value_and_unknown_marks_are_rejected() -> None:
    metrics = TurnMetrics()
    metrics.mark_first("first_token", 1.0)
    metrics.mark_first("first_token", 2.0)
    assert metrics.first_token == 1.0
    metrics.mark("last_token", 3.0)
    metrics.mark("last_token", 4.0)
    assert metrics.last_token == 4.0
    with pytest.raises(ValueError, match="unknown mark 'first_tokn'"):
        metrics.mark("first_tokn", 1.0)


def test_to_dict_is_json_with_marks_relative_to_the_turn_start() -> None:
    record = json.loads(json.dumps(sample().to_dict()))
    assert record["turn"] == 2
    assert record["durations_ms"]["ttft"] == pytest.approx(312.0)
    assert record["marks_ms"]["user_speech_end"] == 0.0
    assert record["marks_ms"]["first_audio_played"] == pytest.approx(620.0)
    assert record["marks_ms"]["barge_in"] is None
    assert set(record["marks_ms"]) == set(MARKS)
