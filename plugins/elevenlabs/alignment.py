"""Absolute character and word timings from the per-chunk alignment of one TTS context.

The service's alignment times are relative to the audio chunk that carries them. A tracker keeps
a running offset: each chunk starts where the previous one ended, and a chunk ends at
``max(largest start + duration of its characters, its audio duration)``; audio duration 0 (not
known) means the alignment alone decides. Times are seconds from the context's first audio.

Words are maximal runs of non-whitespace characters (punctuation sticks to its word). A word
counts as *heard* once its end is at most ``played_seconds + tolerance`` (default 50 ms): a word
cut off in the middle is not heard. `heard_text` returns the context's text up to and including
the last heard word, exactly as aligned (spacing and punctuation kept), stripped.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.interfaces import WordTiming

from .messages import Alignment

DEFAULT_HEARD_TOLERANCE = 0.05


@dataclass(frozen=True)
class TimedChar:
    """One character with absolute times (seconds)."""

    char: str
    start: float
    end: float


class AlignmentTracker:
    """Running offset across the audio chunks of one context."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._chars: list[TimedChar] = []

    @property
    def offset(self) -> float:
        """Where the next chunk starts (seconds from the first audio)."""
        return self._offset

    @property
    def text(self) -> str:
        """All aligned characters so far, joined."""
        return "".join(c.char for c in self._chars)

    @property
    def chars(self) -> list[TimedChar]:
        return list(self._chars)

    def feed(
        self, alignment: Alignment | None, audio_seconds: float
    ) -> list[tuple[str, float, float]]:
        """Add one chunk; return its characters as (char, absolute start s, absolute end s)."""
        base = self._offset
        chunk_end = max(0.0, audio_seconds)
        out: list[tuple[str, float, float]] = []
        if alignment is not None:
            for char, start_ms, duration_ms in zip(
                alignment.chars,
                alignment.char_start_times_ms,
                alignment.char_durations_ms,
                strict=True,
            ):
                start = max(0.0, float(start_ms)) / 1000.0
                end = start + max(0.0, float(duration_ms)) / 1000.0
                chunk_end = max(chunk_end, end)
                timed = TimedChar(char, base + start, base + end)
                self._chars.append(timed)
                out.append((timed.char, timed.start, timed.end))
        self._offset = base + chunk_end
        return out

    def words(self) -> list[WordTiming]:
        """Words so far with absolute start/end (seconds)."""
        return [timing for timing, _ in self._words_with_end_index()]

    def _words_with_end_index(self) -> list[tuple[WordTiming, int]]:
        words: list[tuple[WordTiming, int]] = []
        current: list[TimedChar] = []
        for index, timed in enumerate(self._chars):
            if timed.char.isspace() or not timed.char:
                if current:
                    words.append((_word(current), index - 1))
                    current = []
                continue
            current.append(timed)
        if current:
            words.append((_word(current), len(self._chars) - 1))
        return words

    def heard_text(self, played_seconds: float, tolerance: float = DEFAULT_HEARD_TOLERANCE) -> str:
        """The text up to the last word whose end <= played_seconds + tolerance (see module doc)."""
        last_index = -1
        for timing, end_index in self._words_with_end_index():
            if timing.end <= played_seconds + tolerance:
                last_index = end_index
            else:
                break
        return "".join(c.char for c in self._chars[: last_index + 1]).strip()


def _word(chars: list[TimedChar]) -> WordTiming:
    return WordTiming(
        word="".join(c.char for c in chars),
        start=chars[0].start,
        end=max(c.end for c in chars),
    )
