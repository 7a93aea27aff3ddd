"""Word error rate between what was meant and what was heard.

Both texts are normalized the same way before comparing: lowercase, punctuation and apostrophes
dropped, hyphens split words, and numbers spelled out in words: "3" and "three" match,
"555-1234" and "555 1234" match, "$5" reads "5 dollars", "20%" reads "20 percent", "3rd" reads
"third", "3.14" reads "3 point 1 4".
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_words", "number_to_words", "wer", "word_edit_distance"]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}

_CURRENCY = re.compile(r"\$(\d[\d,]*(?:\.\d+)?)")
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL = re.compile(r"(\d)\.(\d+)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def number_to_words(n: int) -> str:
    """Spell a non-negative integer in English words (no "and"): 105 -> "one hundred five"."""
    if n < 0:
        raise ValueError(f"number_to_words needs a non-negative integer, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_to_words(rest))
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            head = number_to_words(high) + " " + name
            return head + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")  # pragma: no cover


def _ordinal_words(n: int) -> str:
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _digits_to_words(token: str) -> str:
    if (len(token) > 1 and token.startswith("0")) or len(token) > 12:
        return " ".join(_ONES[int(d)] for d in token)  # codes like 007: digit by digit
    return number_to_words(int(token))


def normalize_words(text: str) -> list[str]:
    """The comparable words of `text` (see the module docstring for the rules)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("’", "'").replace("‘", "'")
    text = _CURRENCY.sub(lambda m: f"{m.group(1)} dollars", text)
    text = text.replace("%", " percent")
    text = text.replace("&", " and ")
    text = _THOUSANDS_SEPARATOR.sub("", text)
    text = _DECIMAL.sub(lambda m: f"{m.group(1)} point {' '.join(m.group(2))} ", text)
    text = _ORDINAL.sub(lambda m: " " + _ordinal_words(int(m.group(1))) + " ", text)
    text = text.replace("'", "")
    words: list[str] = []
    for token in _NOT_WORD.split(text):
        if not token:
            continue
        for piece in re.findall(r"\d+|[a-z]+", token):  # "4pm" -> "4", "pm"
            words.extend(_digits_to_words(piece).split() if piece.isdigit() else [piece])
    return words


def word_edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance counted in words (substitutions, insertions, deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word edits needed to turn reference into hypothesis / reference words.

    Both are normalized first. An empty reference gives 0.0 for an empty hypothesis, else 1.0.
    """
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return word_edit_distance(ref, hyp) / len(ref)
