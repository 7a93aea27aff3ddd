"""TextChunker: what reaches the TTS socket, for every way an LLM can split its text."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.text import TextChunker


def run(
    deltas: list[str], sentence_mode: bool = False, max_word_chars: int = 64
) -> list[list[str]]:
    """Push every delta, then finish; return what each call returned."""
    chunker = TextChunker(sentence_mode, max_word_chars=max_word_chars)
    out = [chunker.push(delta) for delta in deltas]
    out.append(chunker.finish())
    return out


def flat(calls: list[list[str]]) -> list[str]:
    return [piece for call in calls for piece in call]


def normalized(text: str) -> str:
    return " ".join(text.split()) + " " if text.split() else ""


# --- word mode -------------------------------------------------------------------------------


def test_whole_words_are_released_as_soon_as_a_space_follows() -> None:
    chunker = TextChunker()
    assert chunker.push("Hello") == []
    assert chunker.push(" world") == ["Hello "]
    assert chunker.push(", how") == ["world, "]
    assert chunker.push(" are you?") == ["how are "]
    assert chunker.finish() == ["you? "]


def test_partial_words_are_held_across_deltas() -> None:
    chunker = TextChunker()
    assert chunker.push("Hel") == []
    assert chunker.push("lo") == []
    assert chunker.held == "Hello"
    assert chunker.push("wor") == []
    assert chunker.push("ld ") == ["Helloworld "]
    assert chunker.held == ""
    assert chunker.finish() == []


def test_trailing_space_releases_the_word_immediately() -> None:
    assert run(["Hi ", "there "]) == [["Hi "], ["there "], []]


def test_whitespace_runs_and_newlines_collapse_to_one_space() -> None:
    pieces = flat(run(["One  ", "\n\n", "two\t\tthree", "\r\n", " four"]))
    assert "".join(pieces) == "One two three four "
    assert all("  " not in piece for piece in pieces)


def test_never_returns_empty_or_whitespace_only_pieces() -> None:
    calls = run(["", " ", "\n", "  \t", "", "a", "", " ", "\n\n", ""])
    assert flat(calls) == ["a "]
    assert calls[0] == [] and calls[1] == [] and calls[2] == []


def test_leading_whitespace_is_dropped() -> None:
    assert flat(run(["  \n Hello", " there"])) == ["Hello ", "there "]


def test_unicode_words_and_unicode_whitespace() -> None:
    pieces = flat(run(["Crème", " brûlée", "\u00a0au", "\u2003café ", "😀", "👍 fin"]))
    assert "".join(pieces) == "Crème brûlée au café 😀👍 fin "
    assert pieces[-1] == "fin "


def test_an_unbroken_run_is_released_when_it_gets_too_long() -> None:
    chunker = TextChunker(max_word_chars=8)
    assert chunker.push("今日は") == []
    assert chunker.push("いい天気ですね") == ["今日はいい天気ですね "]
    assert chunker.push("。") == []
    assert chunker.finish() == ["。 "]


def test_finish_resets_for_the_next_reply() -> None:
    chunker = TextChunker()
    chunker.push("first")
    assert chunker.finish() == ["first "]
    assert chunker.finish() == []
    assert chunker.push("second ") == ["second "]


def test_reset_drops_held_text() -> None:
    chunker = TextChunker(sentence_mode=True)
    chunker.push("Never fin")
    chunker.reset()
    assert chunker.held == ""
    assert chunker.finish() == []


def test_max_word_chars_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_word_chars"):
        TextChunker(max_word_chars=0)


# --- sentence mode ---------------------------------------------------------------------------


def test_sentence_mode_holds_until_the_sentence_ends() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push("Hello") == []
    assert chunker.push(" there") == []
    assert chunker.push(".") == []  # "." not yet followed by a space: could be "3.5"
    assert chunker.push(" How") == ["Hello there. "]
    assert chunker.push(" are you? I am") == ["How are you? "]
    assert chunker.finish() == ["I am "]


def test_sentence_mode_returns_several_sentences_from_one_delta() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push("Yes! Really? Sure. And") == ["Yes! ", "Really? ", "Sure. "]
    assert chunker.held == "And"


def test_sentence_mode_newline_ends_a_sentence() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push("- milk\n- eggs") == ["- milk "]
    assert chunker.push("\n") == ["- eggs "]
    assert chunker.finish() == []


def test_sentence_mode_keeps_closing_quotes_with_the_sentence() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push('He said "stop." Then') == ['He said "stop." ']


def test_sentence_mode_does_not_split_on_numbers_or_titles() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push("Pi is 3.14 and Dr. Who is 1. Great. ") == [
        "Pi is 3.14 and Dr. Who is 1. Great. ",
    ]


def test_sentence_mode_decimal_split_across_deltas() -> None:
    chunker = TextChunker(sentence_mode=True)
    assert chunker.push("It costs 3.") == []
    assert chunker.push("50 dollars. Ok") == ["It costs 3.50 dollars. "]


def test_sentence_mode_collapses_whitespace_and_skips_blank_input() -> None:
    calls = run(["  ", "\n\n", "One.\n\n\n", "  Two  ", ""], sentence_mode=True)
    assert flat(calls) == ["One. ", "Two "]


# --- properties over every way of splitting the text -----------------------------------------

texts = st.text(
    alphabet=st.sampled_from(list("abcé漢😀.,!?'\" \n\t\u00a0")), max_size=120
)


@st.composite
def split_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=30)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in pairwise(bounds)]


@given(split_text(), st.booleans())
def test_output_is_the_normalized_text_whatever_the_split(
    case: tuple[str, list[str]], sentence_mode: bool
) -> None:
    text, deltas = case
    pieces = flat(run(deltas, sentence_mode, max_word_chars=1000))
    assert "".join(pieces) == normalized(text)
    for piece in pieces:
        assert piece.strip()
        assert piece.endswith(" ") and not piece.endswith("  ")
        assert not piece.startswith(" ")
        assert "  " not in piece


@given(split_text())
def test_word_mode_releases_every_complete_word_without_waiting(
    case: tuple[str, list[str]],
) -> None:
    _text, deltas = case
    chunker = TextChunker(max_word_chars=1000)
    seen = ""
    sent = ""
    for delta in deltas:
        seen += delta
        sent += "".join(chunker.push(delta))
        partial = "" if not seen or seen[-1].isspace() else seen.split()[-1]
        complete = seen[: len(seen) - len(partial)]
        assert sent == normalized(complete)
