"""The piper engine's text side, without the engine: sentence splitting and estimated alignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.local.piper_tts import estimate_alignment, split_sentences

RATE = 22050


def test_sentences_keep_their_trailing_space() -> None:
    assert split_sentences("Hi there. How are you? Fine!  Good") == [
        "Hi there. ",
        "How are you? ",
        "Fine!  ",
        "Good",
    ]


def test_pieces_with_nothing_to_say_join_a_neighbour() -> None:
    assert split_sentences("... Hello. ") == ["... Hello. "]
    assert split_sentences("Hello. ... ") == ["Hello. ... "]
    assert split_sentences("   ") == ["   "]
    assert split_sentences("") == []


def test_decimals_and_closing_quotes() -> None:
    assert split_sentences('It costs 3.50 now. "Really?" she asked.') == [
        "It costs 3.50 now. ",
        '"Really?" ',
        "she asked.",
    ]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .!?,'\n\"")), max_size=60))
def test_split_sentences_joins_back_exactly(text: str) -> None:
    assert "".join(split_sentences(text)) == text


def speech(seconds: float, lead: float = 0.05, tail: float = 0.2) -> np.ndarray:
    n = int(seconds * RATE)
    audio = np.zeros(n, dtype=np.float32)
    audio[int(lead * RATE) : n - int(tail * RATE)] = 0.5
    return audio


def test_leading_and_trailing_silence_go_to_the_edge_characters() -> None:
    text = " Hello there. "
    starts, durations = estimate_alignment(text, speech(1.0), RATE)
    assert starts[0] == 0.0
    assert starts[1] == pytest.approx(50.0, abs=10.0)  # "H" starts when speech does
    last_letter = text.rindex("e")
    assert starts[last_letter] + durations[last_letter] == pytest.approx(800.0, abs=10.0)
    assert starts[-1] + durations[-1] == pytest.approx(1000.0)


def test_letters_get_more_time_than_spaces() -> None:
    text = "ab cd"
    _starts, durations = estimate_alignment(text, speech(1.0), RATE)
    assert durations[2] < durations[0]
    assert durations[0] == pytest.approx(durations[1])


def test_no_audio_gives_zero_times() -> None:
    assert estimate_alignment("...", np.zeros(0, dtype=np.float32), RATE) == (
        (0.0, 0.0, 0.0),
        (0.0, 0.0, 0.0),
    )
    assert estimate_alignment("", speech(0.5), RATE) == ((), ())


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab1 .,!?-")), min_size=1, max_size=40),
    st.floats(min_value=0.3, max_value=3.0),
    st.floats(min_value=0.0, max_value=0.2),
)
def test_alignment_is_ordered_and_covers_the_audio(text: str, seconds: float, lead: float) -> None:
    audio = speech(seconds, lead=lead, tail=0.1)
    starts, durations = estimate_alignment(text, audio, RATE)
    assert len(starts) == len(durations) == len(text)
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert all(d > 0 for d in durations)
    assert all(
        s + d == pytest.approx(nxt)
        for s, d, nxt in zip(starts, durations, starts[1:], strict=False)
    )
    assert starts[-1] + durations[-1] == pytest.approx(len(audio) / RATE * 1000)
