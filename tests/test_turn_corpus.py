"""The turn-taking benchmark's corpus is what it claims: enough lines, half of them paused for
400-700 ms after an obviously unfinished phrase, with the pause and the end where it says."""

from __future__ import annotations

import numpy as np
import pytest

from bench.turn_corpus import (
    CORPUS,
    MAX_PAUSE_MS,
    MIN_PAUSE_MS,
    RATE,
    Utterance,
    join_with_pause,
    replace_gap,
    voiced_span,
)

# words a speaker does not stop a sentence on
UNFINISHED_ENDINGS = {"for", "to", "is", "could", "i", "with", "on", "near", "my", "the", "a"}


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * hz * t)


def pcm(*parts: np.ndarray) -> bytes:
    joined = np.concatenate(parts)
    return np.asarray(np.rint(joined * 32767), dtype="<i2").tobytes()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE))


def test_the_corpus_has_enough_lines_half_of_them_paused() -> None:
    assert len(CORPUS) >= 20
    assert len({u.name for u in CORPUS}) == len(CORPUS)
    paused = [u for u in CORPUS if u.paused]
    assert 0.4 <= len(paused) / len(CORPUS) <= 0.6


@pytest.mark.parametrize("utterance", CORPUS, ids=lambda u: u.name)
def test_each_line_is_well_formed(utterance: Utterance) -> None:
    if not utterance.paused:
        assert utterance.pause_ms == 0
        assert utterance.first.endswith((".", "?"))
        return
    assert MIN_PAUSE_MS <= utterance.pause_ms <= MAX_PAUSE_MS
    assert utterance.first[-1].isalpha(), "the first half stops mid-sentence, unpunctuated"
    assert utterance.first.split()[-1].lower() in UNFINISHED_ENDINGS
    assert utterance.second.endswith((".", "?"))


def test_a_spliced_line_has_exactly_the_pause_and_its_real_end() -> None:
    line = Utterance("x", "one", "two.", 550)
    first = pcm(silence(0.05), tone(0.8), silence(0.05))
    second = pcm(silence(0.05), tone(0.6, 330.0), silence(0.05))
    spoken = join_with_pause(first, second, 550, line)
    assert spoken.pause is not None
    start, end = spoken.pause
    assert end - start == pytest.approx(0.55)
    assert start == pytest.approx(0.85, abs=0.011)
    assert spoken.speech_end == pytest.approx(voiced_span(spoken.pcm)[1], abs=0.011)
    assert spoken.speech_end == pytest.approx(0.85 + 0.55 + 0.6, abs=0.021)
    gap = spoken.pcm[round(start * RATE) * 2 : round(end * RATE) * 2]
    assert not any(gap), "the pause is digital silence"
    assert spoken.until(start, silence_after=0.2)[-round(0.2 * RATE) * 2 :] == bytes(6400)


def test_an_in_sentence_pause_is_found_where_expected_and_set_to_length() -> None:
    line = Utterance("x", "one two", "three.", 650)
    audio = pcm(
        silence(0.05), tone(0.3), silence(0.12), tone(0.5), silence(0.25), tone(0.7), silence(0.05)
    )
    spoken = replace_gap(audio, 650, line, near=0.5)
    assert spoken.style == "in-sentence"
    assert spoken.pause is not None
    start, end = spoken.pause
    assert start == pytest.approx(0.05 + 0.3 + 0.12 + 0.5, abs=0.011)  # the wide gap, not the first
    assert end - start == pytest.approx(0.65)
    assert spoken.speech_end == pytest.approx(end + 0.7, abs=0.021)


def test_no_pause_where_expected_is_an_error() -> None:
    late_gap = pcm(tone(1.5), silence(0.3), tone(0.1))  # at 80 % of the speech, not near 50 %
    with pytest.raises(ValueError, match="no pause"):
        replace_gap(late_gap, 500, Utterance("x", "a", "b."), near=0.5)
    with pytest.raises(ValueError, match="no pause"):
        replace_gap(pcm(tone(2.0)), 500, Utterance("x", "a", "b."))
