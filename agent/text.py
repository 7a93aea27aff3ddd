"""Turning LLM deltas into the space-terminated text pieces a TTS socket wants.

LLM tokens split words anywhere ("Hel", "lo", " world"). `TextChunker` releases text as soon as
it forms whole words, each piece ending in exactly one space, and holds back the partial word at
the end until the next delta (or `finish()`) shows where it ends. Whitespace runs, newlines
included, collapse to one space; no piece is ever empty or whitespace only.

In sentence mode it holds text until a sentence ends (". ", "! ", "? " or a newline) and then
releases whole sentences, for engines that synthesize better with full sentences.

This sits on the per-token hot path: it does one split per delta and no regex in word mode.
"""

from __future__ import annotations

import re

__all__ = ["TextChunker"]

_SENTENCE_END = frozenset(".!?…。！？")
_CLOSERS = "\"'”’)]}»"
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e."})
_WORD_AND_SPACE = re.compile(r"(\S+)(\s+)")


class TextChunker:
    """Split a stream of text deltas into whole-word (or whole-sentence) pieces.

    `max_word_chars` bounds how long an unbroken run (a URL, text in a script without spaces)
    is held: a longer run is released as if it were followed by a space.
    """

    __slots__ = ("_sentence", "_tail", "max_word_chars", "sentence_mode")

    def __init__(self, sentence_mode: bool = False, *, max_word_chars: int = 64) -> None:
        if max_word_chars < 1:
            raise ValueError("max_word_chars must be at least 1")
        self.sentence_mode = sentence_mode
        self.max_word_chars = max_word_chars
        self._tail = ""  # the partial word at the end (never contains whitespace)
        self._sentence: list[str] = []  # sentence mode: whole words of the unfinished sentence

    @property
    def held(self) -> str:
        """The text held back so far (normalized, without a trailing space)."""
        if self._tail:
            return " ".join([*self._sentence, self._tail])
        return " ".join(self._sentence)

    def push(self, delta: str) -> list[str]:
        """Add a delta; return the pieces to send now (each ends with exactly one space)."""
        if not delta:
            return []
        text = self._tail + delta if self._tail else delta
        if self.sentence_mode:
            return self._push_sentences(text)
        words = text.split()
        if not words:
            return []
        if text[-1].isspace():
            self._tail = ""
        else:
            tail = words[-1]
            if len(tail) <= self.max_word_chars:
                words.pop()
                self._tail = tail
            else:
                self._tail = ""
            if not words:
                return []
        return [" ".join(words) + " "]

    def finish(self) -> list[str]:
        """End of the reply: return whatever is held (space-terminated) and reset."""
        held = self.held
        self.reset()
        return [held + " "] if held else []

    def reset(self) -> None:
        """Forget everything held (e.g. after barge-in)."""
        self._tail = ""
        self._sentence.clear()

    def _push_sentences(self, text: str) -> list[str]:
        pieces: list[str] = []
        sentence = self._sentence
        end = 0
        for match in _WORD_AND_SPACE.finditer(text):
            word = match.group(1)
            sentence.append(word)
            end = match.end()
            if "\n" in match.group(2) or _ends_sentence(word):
                pieces.append(" ".join(sentence) + " ")
                sentence.clear()
        tail = text[end:].lstrip()
        if len(tail) > self.max_word_chars:
            sentence.append(tail)
            tail = ""
        self._tail = tail
        return pieces


def _ends_sentence(word: str) -> bool:
    """True if `word` ends a sentence: final . ! ? (before closing quotes), not "Dr." or "3."."""
    core = word.rstrip(_CLOSERS)
    if not core or core[-1] not in _SENTENCE_END:
        return False
    if core[-1] == ".":
        if core[:-1].isdigit() or core.lower() in _ABBREVIATIONS:
            return False
    return True
