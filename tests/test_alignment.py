"""AlignmentTracker: per-chunk relative alignment -> absolute char and word timings."""

from __future__ import annotations

import pytest

from agent.interfaces import WordTiming
from plugins.elevenlabs.alignment import AlignmentTracker
from plugins.elevenlabs.protocol import Alignment


def chunk(text: str, char_ms: int = 100) -> Alignment:
    """Evenly timed alignment for `text`, relative to its own chunk."""
    return Alignment(
        tuple(text),
        tuple(i * char_ms for i in range(len(text))),
        tuple(char_ms for _ in text),
    )


def test_offsets_rise_across_chunks_and_chars_join_back_to_the_text() -> None:
    tracker = AlignmentTracker()
    first = tracker.feed(chunk("Hello "), audio_seconds=0.0)
    assert first[0] == ("H", 0.0, 0.1)
    assert tracker.offset == pytest.approx(0.6)
    second = tracker.feed(chunk("world. "), audio_seconds=0.0)
    assert second[0][1] == pytest.approx(0.6)  # starts where the first chunk ended
    third = tracker.feed(chunk("Bye."), audio_seconds=0.0)
    starts = [s for _, s, _ in first + second + third]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(e > s for _, s, e in first + second + third)
    assert tracker.text == "Hello world. Bye."
    assert "".join(c for c, _, _ in first + second + third) == "Hello world. Bye."


def test_chunk_end_is_the_longer_of_alignment_and_audio() -> None:
    tracker = AlignmentTracker()
    tracker.feed(chunk("Hi"), audio_seconds=1.5)  # trailing silence in the audio
    assert tracker.offset == pytest.approx(1.5)
    tracker.feed(chunk("Yo"), audio_seconds=0.05)  # audio duration unknown/short
    assert tracker.offset == pytest.approx(1.7)
    tracker.feed(None, audio_seconds=0.3)  # audio without alignment still advances time
    assert tracker.offset == pytest.approx(2.0)
    (char,) = tracker.feed(chunk("X"), audio_seconds=0.0)
    assert char[1] == pytest.approx(2.0)


def test_words_have_absolute_times() -> None:
    tracker = AlignmentTracker()
    tracker.feed(chunk("Hi there, "), audio_seconds=0.0)
    tracker.feed(chunk("you."), audio_seconds=0.0)
    words = tracker.words()
    assert [w.word for w in words] == ["Hi", "there,", "you."]
    assert words[0].word == "Hi" and isinstance(words[0], WordTiming)
    assert words[0].start == 0.0 and words[0].end == pytest.approx(0.2)
    assert words[1].start == pytest.approx(0.3) and words[1].end == pytest.approx(0.9)
    assert words[2].start == pytest.approx(1.0) and words[2].end == pytest.approx(1.4)


def test_a_word_split_across_chunks_is_one_word() -> None:
    tracker = AlignmentTracker()
    tracker.feed(chunk("Hel"), audio_seconds=0.0)
    tracker.feed(chunk("lo you"), audio_seconds=0.0)
    assert [w.word for w in tracker.words()] == ["Hello", "you"]


def test_heard_text_counts_only_words_that_finished_playing() -> None:
    tracker = AlignmentTracker()
    tracker.feed(chunk("One two, three."), audio_seconds=0.0)
    # "One" ends at 0.3 s, "two," at 0.8 s, "three." at 1.5 s
    assert tracker.heard_text(0.0) == ""
    assert tracker.heard_text(0.29) == "One"  # within the 50 ms tolerance
    assert tracker.heard_text(0.5) == "One"  # "two," is cut off mid-word: not heard
    assert tracker.heard_text(0.8) == "One two,"
    assert tracker.heard_text(10.0) == "One two, three."
    assert tracker.heard_text(0.5, tolerance=0.0) == "One"


def test_empty_tracker() -> None:
    tracker = AlignmentTracker()
    assert tracker.words() == [] and tracker.heard_text(5.0) == "" and tracker.offset == 0.0
