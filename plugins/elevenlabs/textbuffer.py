"""Server-side text buffering of one TTS context: join rules, chunk schedule, auto_mode sentences.

Pure string logic used by `ServerProtocol`:

- Join rule: pieces are concatenated as sent, except that a space is inserted when the text so
  far ends with sentence/clause punctuation (``. ! ? , ; : …``, optionally followed by closing
  quotes/brackets) and the new piece starts with a letter (or an opening ``¿ ¡ ( [ “ ‘``).
  So ``"Hello" " there" "!"`` -> ``"Hello there!"`` and ``"Hello there!" "I am here."`` ->
  ``"Hello there! I am here."``. Two pieces that meet letter-to-letter are NOT separated: LLM
  token streams split words into sub-word tokens ("Un", "believ", "able").
  Whitespace-only pieces add at most one space; leading whitespace of a context is dropped.
- Schedule: the first chunk is released when `schedule[0]` characters are buffered, the next when
  `schedule[1]` more are, ... the last value repeats. A chunk is cut after the last whitespace in
  the buffer (so a half-received word stays buffered); with no whitespace the whole buffer goes.
  A flush releases everything and restarts the schedule at its first value.
- first_clause (a local-server extension, off unless the server asks for it): before the
  schedule's first chunk is due, the context's first clause is released as soon as it is
  complete: two words or more ending in sentence or clause punctuation followed by whitespace
  ("The sky is blue. ", "Well, you see, "), or its first five words, whichever comes first. It
  is an extra chunk: the schedule then starts at its first value. The voice starts a clause
  after the first token instead of 50 characters, and, being released rather than flushed, the
  clause is dropped by a close_context like any scheduled chunk (barge-in costs nothing).
- auto_mode: the schedule is ignored; a chunk is released at every complete sentence: sentence
  punctuation followed by whitespace, or a multi-character piece that itself ends with sentence
  punctuation (a client sending whole sentences). Without a sentence end, text is released at a
  word boundary once MAX_SCHEDULE_VALUE characters are buffered.

The concatenation of all released chunks equals the joined text (leading whitespace aside, and
whitespace-only buffers are dropped at a flush).

- Bounded pieces: `bounded_pieces` cuts a released chunk into pieces of at most
  MAX_PIECE_CHARS letters for the engine (an emoji or a CJK character counts as 8, a digit as
  2: what they cost a voice that reads them out): at the last sentence end within the limit,
  else the last clause break (``, ; : — –``) in its second half, else the last word break,
  else (a run without spaces, such as ten thousand emoji) at the limit itself, never inside a
  combining sequence. An engine's memory and the time to abandon a piece grow with its length,
  so a 2,000-character sentence without punctuation is spoken as 17 pieces, not one call.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from agent.session import FIRST_CLAUSE_MAX_WORDS as _AGENT_FIRST_CLAUSE_MAX_WORDS

from .settings import MAX_SCHEDULE_VALUE, TRY_TRIGGER_MIN_CHARS, GenerationConfig

_CLOSERS = "\"')]}”’»"
_JOIN_AFTER = ".!?,;:…"
_SENTENCE_END = ".!?…"
_OPENERS = "¿¡([“‘"
_SENTENCE_BOUNDARY = re.compile(r"[.!?…][\"')\]}”’»]*\s+")
_ANY_BOUNDARY = re.compile(r"[.!?…,;:\u2013\u2014][\"')\]}”’»]*\s+")
_CLAUSE_BOUNDARY = re.compile(r"[,;:\u2013\u2014][\"')\]}”’»]*\s+")
_WORD_BOUNDARY = re.compile(r"\s+")
#: Most text handed to the engine in one call, in letters (`char_cost`; plus at most
#: _TRAILING_SPACE whitespace). piper's memory for one call grows about 1.2 MB a letter (its
#: arena keeps the peak), so this bounds it near what one long ordinary sentence takes.
MAX_PIECE_CHARS = 120
_TRAILING_SPACE = 8


def needs_space(tail: str, piece: str) -> bool:
    """Whether a space must go between text ending in `tail` and `piece` (see module doc)."""
    if not tail or not piece or tail[-1].isspace() or piece[0].isspace():
        return False
    stripped = tail.rstrip(_CLOSERS)
    if not stripped or stripped[-1] not in _JOIN_AFTER:
        return False
    return piece[0].isalpha() or piece[0] in _OPENERS


def _ends_sentence(piece: str) -> bool:
    stripped = piece.rstrip().rstrip(_CLOSERS)
    return len(stripped) > 1 and stripped[-1] in _SENTENCE_END


def _word_cut(text: str) -> int:
    """Index just after the last whitespace of `text`, or len(text) when there is none useful."""
    for index in range(len(text) - 1, -1, -1):
        if text[index].isspace():
            if text[:index].strip():
                return index + 1
            break
    return len(text)


@dataclass
class TextBuffer:
    """The not-yet-released text of one context plus its position in the schedule."""

    config: GenerationConfig
    auto_mode: bool = False
    first_clause: bool = False
    pending: str = ""
    tail: str = ""  # the last few characters of all text appended so far
    chunk_index: int = 0
    _sentence_ready: bool = False
    _clause_taken: bool = False

    def append(self, piece: str) -> None:
        """Add a client text piece, applying the join rule."""
        if not piece:
            return
        if piece.isspace():
            if self.tail and not self.tail[-1].isspace():
                self._add(" ")
            return
        if not self.tail:
            piece = piece.lstrip()
        elif needs_space(self.tail, piece):
            piece = " " + piece
        self._add(piece)
        if _ends_sentence(piece):
            self._sentence_ready = True

    def _add(self, piece: str) -> None:
        self.pending += piece
        self.tail = (self.tail + piece)[-8:]

    def take_ready(self) -> list[str]:
        """Chunks the schedule (or auto_mode's sentence rule) releases now."""
        return self._take_sentences() if self.auto_mode else self._take_scheduled()

    def _take_scheduled(self) -> list[str]:
        out: list[str] = []
        if self.first_clause and not self._clause_taken and self.chunk_index == 0:
            cut = _first_clause_end(self.pending)
            if cut and cut < self.config.threshold(0):
                self._clause_taken = True
                out.extend(self._release(cut))
        while self.pending and len(self.pending) >= self.config.threshold(self.chunk_index):
            out.extend(self._release(_word_cut(self.pending)))
            self.chunk_index += 1
        return out

    def _take_sentences(self) -> list[str]:
        out: list[str] = []
        cut = 0
        for match in _SENTENCE_BOUNDARY.finditer(self.pending):
            cut = match.end()
        if self._sentence_ready:
            cut = len(self.pending)
        self._sentence_ready = False
        if cut:
            out.extend(self._release(cut))
        while len(self.pending) >= MAX_SCHEDULE_VALUE:
            out.extend(self._release(_word_cut(self.pending)))
        return out

    def take_trigger(self) -> list[str]:
        """try_trigger_generation: release up to a word boundary if >= 50 chars are buffered."""
        if len(self.pending.strip()) < TRY_TRIGGER_MIN_CHARS:
            return []
        self.chunk_index += 1
        return self._release(_word_cut(self.pending))

    def take_all(self) -> str:
        """Flush: everything buffered ("" when only whitespace); the schedule restarts."""
        text, self.pending = self.pending, ""
        self.chunk_index = 0
        self._sentence_ready = False
        return text if text.strip() else ""

    def drop(self) -> None:
        """Forget unreleased text (close_context, timeout)."""
        self.pending = ""
        self._sentence_ready = False

    def _release(self, cut: int) -> list[str]:
        chunk, self.pending = self.pending[:cut], self.pending[cut:]
        return [chunk] if chunk.strip() else []


_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "etc"})


#: Without a clause end, the first chunk goes once this many words are complete: the agent's
#: own rule for other servers (`agent.session.FIRST_CLAUSE_MAX_WORDS`), so both speak alike.
FIRST_CLAUSE_MAX_WORDS = _AGENT_FIRST_CLAUSE_MAX_WORDS
_WORD_END = re.compile(r"\S\s+")


def _first_clause_end(text: str, max_words: int = FIRST_CLAUSE_MAX_WORDS) -> int:
    """End of the first clause of two words or more in `text`, or of its first `max_words`
    words if that comes sooner (0: neither is complete yet). A period after an abbreviation,
    an initial or a number ("Dr. ", "J. ", "3. ") ends nothing."""
    word_ends = [m.end() for m in _WORD_END.finditer(text)]
    limit = word_ends[max_words - 1] if len(word_ends) >= max_words else 0
    clause = _clause_end(text)
    if clause and limit:
        return min(clause, limit)
    return clause or limit


def _clause_end(text: str) -> int:
    for match in _ANY_BOUNDARY.finditer(text):
        words = text[: match.start()].split()
        if len(words) < 2:
            continue
        if text[match.start()] == "." and _abbreviated(words[-1]):
            continue
        return match.end()
    return 0


def _abbreviated(word: str) -> bool:
    core = word.lower().strip("\"'([“‘")
    return core in _ABBREVIATIONS or len(core) == 1 or core.isdigit()


def _last_end(pattern: re.Pattern[str], text: str, start: int = 1) -> int:
    """End of the last match of `pattern` in `text` that starts at or after `start` (0: none)."""
    cut = 0
    for match in pattern.finditer(text, start):
        cut = match.end()
    return cut


def _joins_previous(char: str) -> bool:
    """Characters that belong to the one before them (combining marks, joiners, selectors)."""
    return (
        bool(unicodedata.combining(char))
        or char in "\u200d\ufe0e\ufe0f"
        or (
            "\U0001f3fb" <= char <= "\U0001f3ff"  # skin tone modifiers
        )
    )


def char_cost(char: str) -> int:
    """What a character costs an engine, in letters: a Latin letter, space or punctuation 1, a
    digit 2 (numbers are read out), anything else 8 (an English voice reads an emoji or a CJK
    character by its name: piper spends about eight times a letter's time on one)."""
    if char < "\u0250":
        return 2 if char.isdigit() else 1
    return 1 if char.isspace() or unicodedata.combining(char) else 8


def _fit(text: str, budget: int) -> int:
    """How many leading characters of `text` cost at most `budget` (at least 1)."""
    total = 0
    for index, char in enumerate(text):
        total += char_cost(char)
        if total > budget:
            return max(1, index)
    return len(text)


def bounded_pieces(text: str, limit: int = MAX_PIECE_CHARS) -> list[str]:
    """`text` cut into pieces costing at most `limit` (`char_cost`: letters, where an emoji
    counts 8; see the module doc; the last piece may carry a few more trailing spaces). The
    pieces join back to `text`, whitespace-only pieces left out."""
    if limit < 2:
        raise ValueError("limit must be at least 2 characters")
    pieces: list[str] = []
    rest = text
    while True:
        size = _fit(rest, limit)
        if size >= len(rest):
            break
        if not rest[size:].strip() and len(rest) - size <= _TRAILING_SPACE:
            break  # only a little whitespace runs past the limit: it stays with its words
        window = rest[: size + 1]  # a boundary's whitespace may sit just past the limit
        cut = _last_end(_SENTENCE_BOUNDARY, window)
        if cut == 0 or cut > size:
            cut = _last_end(_CLAUSE_BOUNDARY, window, size // 2)
        if cut == 0 or cut > size:
            cut = _last_end(_WORD_BOUNDARY, window[:size])
        if cut == 0:
            cut = size
            while cut > 1 and _joins_previous(rest[cut]):
                cut -= 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return [piece for piece in pieces if piece.strip()]
