"""Word error rate: normalization and word-level edit distance."""

from __future__ import annotations

import pytest

from tests.textmetrics import normalize_words, number_to_words, wer, word_edit_distance


def test_identical_text_has_no_errors() -> None:
    assert wer("Hello there, how are you?", "Hello there, how are you?") == 0.0


def test_case_and_punctuation_do_not_count() -> None:
    assert wer("Hello, there! How are you?", "hello there how are you") == 0.0
    assert wer("I don't know.", "I dont know") == 0.0
    assert wer("It’s fine", "it's fine") == 0.0


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        ("Call me at three o'clock.", "Call me at 3 o'clock."),
        ("My number is five hundred fifty five, twelve thirty four", "My number is 555, 12 34"),
        ("five hundred fifty five one thousand two hundred thirty four", "555-1234"),
        ("It costs five dollars", "It costs $5"),
        ("twenty percent off", "20% off"),
        ("the twenty first of May", "the 21st of May"),
        ("one thousand people", "1,000 people"),
        ("twenty-five", "25"),
        ("pi is three point one four", "pi is 3.14"),
        ("agent zero zero seven", "agent 007"),
    ],
)
def test_numbers_match_in_digits_or_words(spoken: str, written: str) -> None:
    assert wer(spoken, written) == 0.0
    assert wer(written, spoken) == 0.0


def test_substitution_insertion_and_deletion_each_count_once() -> None:
    assert wer("the cat sat down", "the dog sat down") == pytest.approx(1 / 4)
    assert wer("the cat sat down", "the cat sat right down") == pytest.approx(1 / 4)
    assert wer("the cat sat down", "the cat down") == pytest.approx(1 / 4)
    assert wer("a b", "x y z w") == pytest.approx(2.0)  # can exceed 1 with many insertions


def test_word_order_matters() -> None:
    assert wer("one two three", "three two one") == pytest.approx(2 / 3)


def test_empty_reference() -> None:
    assert wer("", "") == 0.0
    assert wer("...", "") == 0.0
    assert wer("", "something") == 1.0


def test_edit_distance_on_word_lists() -> None:
    assert word_edit_distance([], ["a", "b"]) == 2
    assert word_edit_distance(["a", "b"], []) == 2
    assert word_edit_distance(["kitten"], ["sitting"]) == 1


def test_number_words() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(15) == "fifteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(105) == "one hundred five"
    assert number_to_words(2_000_017) == "two million seventeen"
    with pytest.raises(ValueError):
        number_to_words(-1)


def test_normalize_splits_digits_from_letters() -> None:
    assert normalize_words("Meet at 4pm") == ["meet", "at", "four", "pm"]
